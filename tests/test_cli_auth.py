"""
The C{fangs} CLI against orchestrators that require credentials: mutual TLS
with certificates from C{fangs pki}, and bearer tokens bootstrapped with
C{twistd fangs-orchestrator --init-admin-token}.
"""

import os
import re
import sys

from twisted.internet.defer import Deferred
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.procs import REPO, OrchestratorProcess, sleep

BIN = os.path.join(os.path.dirname(sys.executable), "fangs")


async def fangs(*args, env=None):
    environ = dict(os.environ, PYTHONPATH=REPO, **(env or {}))
    out, err, code = await getProcessOutputAndValue(BIN, list(args), env=environ, path=REPO)
    return code, out.decode(), err.decode()


class MutualTLSCLITests(TestCase):
    timeout = 120

    def test_pkiThenStatusOverMutualTLS(self):
        return Deferred.fromCoroutine(self._pki())

    async def _pki(self):
        d = os.path.abspath(self.mktemp())
        for args in (["init", d], ["issue-server", d, "127.0.0.1", "::1", "localhost"], ["issue-operator", d, "alice"], ["issue-runner", d, "w1"]):
            code, out, err = await fangs("pki", *args)
            self.assertEqual(code, 0, err)
        orch = OrchestratorProcess(self, extra=[
            "--tls-cert", d + "/server.pem", "--tls-key", d + "/server-key.pem", "--tls-client-ca", d + "/ca.pem", "--tls-crl", d + "/crl.pem",
        ])
        orch.start()
        url = "https://127.0.0.1:%d" % (orch.port,)
        tls = ["--orchestrator", url, "--tls-ca", d + "/ca.pem"]
        operator = tls + ["--tls-cert", d + "/alice.pem", "--tls-key", d + "/alice-key.pem"]
        for _ in range(100):
            code, out, err = await fangs("status", *operator)
            if code == 0:
                break
            await sleep(0.2)
        self.assertEqual(code, 0, err + orch.log()[-2000:])
        self.assertIn("runners", out.lower())
        # A runner certificate cannot use operator commands.
        code, out, err = await fangs("run", "list", *tls, "--tls-cert", d + "/w1.pem", "--tls-key", d + "/w1-key.pem")
        self.assertEqual(code, 1, out + err)
        self.assertIn("runner credentials cannot use operator routes", err)
        self.assertNotIn("Traceback", err)
        # No client certificate: one clear line.
        code, out, err = await fangs("status", *tls)
        self.assertEqual(code, 1)
        self.assertEqual(len(err.strip().splitlines()), 1, err)


class TokenCLITests(TestCase):
    timeout = 120

    def test_bootstrapCreateUseRevoke(self):
        return Deferred.fromCoroutine(self._tokens())

    async def _tokens(self):
        orch = OrchestratorProcess(self, extra=["--auth", "token", "--init-admin-token"])
        orch.start()
        admin = None
        tokenFile = os.path.join(os.path.dirname(orch.db), "initial-admin-token")
        for _ in range(100):
            if re.search(r"initial admin token \S+ written to", orch.log()) and os.path.exists(tokenFile):
                with open(tokenFile) as f:
                    admin = f.read().strip()
                break
            await sleep(0.2)
        self.assertIsNotNone(admin, orch.log()[-2000:])
        # The secret is in a private file and never in the log.
        self.assertEqual(os.stat(tokenFile).st_mode & 0o777, 0o600)
        self.assertNotIn(admin.split("_")[2], orch.log())
        for name in ("fangs.db", "session.key"):
            self.assertEqual(os.stat(os.path.join(os.path.dirname(orch.db), name)).st_mode & 0o077, 0, name)
        env = {"FANGS_ORCHESTRATOR": orch.url}
        code, out, err = await fangs("run", "list", env=env)
        self.assertEqual(code, 1)
        self.assertIn("fangs token create", err)
        code, out, err = await fangs("token", "create", "--name", "reader", "--scope", "orchestrator:read", "--token", admin, env=env)
        self.assertEqual(code, 0, err)
        reader = out.strip().splitlines()[-1]
        self.assertTrue(reader.startswith("fangs_"))
        code, out, err = await fangs("run", "list", env=dict(env, FANGS_TOKEN=reader))
        self.assertEqual(code, 0, err)
        code, out, err = await fangs("scan", "submit", "left-pad@1.3.0", "--skip-registry-validate", env=dict(env, FANGS_TOKEN=reader))
        self.assertEqual(code, 1, out + err)
        self.assertIn("orchestrator:write", err)
        code, out, err = await fangs("token", "list", "--token", admin, env=env)
        self.assertIn("reader", out)
        tokenID = reader.split("_")[1]
        code, out, err = await fangs("token", "revoke", tokenID[:6], "--token", admin, env=env)
        self.assertEqual(code, 0, err)
        code, out, err = await fangs("run", "list", env=dict(env, FANGS_TOKEN=reader))
        self.assertEqual(code, 1)
        self.assertIn("revoked", err)
