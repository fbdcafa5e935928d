"""
Tenants end to end: a real C{twistd fangs-orchestrator} in token mode and the
real C{fangs} CLI.  The first admin token is every tenant's; it mints tokens
of two tenants (C{fangs --tenant T token create}); one tenant's scan is
invisible to the other, naming another tenant is refused, and the admin
selects a tenant with C{--tenant} / C{FANGS_TENANT}.
"""

import json
import os
import re
import urllib.request

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from tests.procs import OrchestratorProcess, sleep
from tests.test_cli_auth import fangs


class TenantsCLITests(TestCase):
    timeout = 120

    def test_twoTenantsOneOrchestrator(self):
        return Deferred.fromCoroutine(self._tenants())

    async def _tenants(self):
        orch = OrchestratorProcess(self, extra=["--auth", "token", "--init-admin-token"])
        orch.start()
        admin = None
        tokenFile = os.path.join(os.path.dirname(orch.db), "initial-admin-token")
        for _ in range(150):
            if re.search(r"initial admin token \S+ written to", orch.log()) and os.path.exists(tokenFile):
                with open(tokenFile) as f:
                    admin = f.read().strip()
                break
            await sleep(0.2)
        self.assertIsNotNone(admin, orch.log()[-2000:])
        env = {"FANGS_ORCHESTRATOR": orch.url}
        tokens = {}
        for tenant, name, scope in (("team-a", "alice", "orchestrator:write"), ("team-b", "bob", "orchestrator:admin")):
            code, out, err = await fangs("--tenant", tenant, "token", "create", "--name", name, "--scope", scope,
                                         "--token", admin, env=env)
            self.assertEqual(code, 0, err)
            self.assertIn("tenant %s" % (tenant,), out)
            tokens[name] = out.strip().splitlines()[-1]
        # FANGS_TENANT works as --tenant does; the listing shows each token's tenant.
        code, out, err = await fangs("token", "list", "--token", admin, env=dict(env, FANGS_TENANT="team-a"))
        self.assertEqual(code, 0, err)
        self.assertRegex(out, r"alice\s+team-a")
        code, out, err = await fangs("token", "list", "--token", admin, env=env)
        self.assertRegex(out, r"initial-admin\s+\*")
        self.assertRegex(out, r"bob\s+team-b")

        code, out, err = await fangs("scan", "submit", "left-pad@1.3.0", "--skip-registry-validate", "--json",
                                     env=dict(env, FANGS_TOKEN=tokens["alice"]))
        self.assertEqual(code, 0, err)
        runID = json.loads(out)["run_id"]
        alice = dict(env, FANGS_TOKEN=tokens["alice"])
        bob = dict(env, FANGS_TOKEN=tokens["bob"])
        code, out, err = await fangs("run", "show", runID, env=alice)
        self.assertEqual(code, 0, err)
        self.assertIn("left-pad", out)
        # Tenant B: the run does not exist for it, and naming A is refused.
        code, out, err = await fangs("run", "list", "--json", env=bob)
        self.assertEqual((code, json.loads(out)), (0, []), err)
        code, out, err = await fangs("run", "show", runID, env=bob)
        self.assertEqual(code, 3, out + err)  # the CLI's "not found"
        self.assertIn("not found", err)
        self.assertNotIn("left-pad", out + err)
        code, out, err = await fangs("--tenant", "team-a", "run", "list", env=bob)
        self.assertNotEqual(code, 0, out + err)
        self.assertIn("tenant", err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        # A tenant's admin is refused minting tokens of another tenant.
        code, out, err = await fangs("--tenant", "team-a", "token", "create", "--name", "x", "--scope", "orchestrator:read",
                                     env=bob)
        self.assertNotEqual(code, 0, out + err)
        self.assertIn("tenant", err)
        # The all-tenant admin acts on default unless it selects a tenant.
        code, out, err = await fangs("run", "list", "--json", "--token", admin, env=env)
        self.assertEqual(json.loads(out), [], err)
        code, out, err = await fangs("--tenant", "team-a", "run", "list", "--json", "--token", admin, env=env)
        self.assertEqual([r["run_id"] for r in json.loads(out)], [runID], err)
        # Admin health counts the queue by tenant.
        req = urllib.request.Request(orch.url + "/v1/admin/health", headers={"Authorization": "Bearer " + admin})
        health = json.loads(await _blocking(req))
        self.assertEqual(health["queue"]["by_tenant"], {"team-a": 1})


async def _blocking(req):
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThreadPool

    def get():
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read()

    return await deferToThreadPool(reactor, reactor.getThreadPool(), get)
