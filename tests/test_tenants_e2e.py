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


class CertificateTenantsTests(TestCase):
    """
    Mutual TLS on a real listening orchestrator: operator certificates from
    C{fangs pki} name their tenant in a SAN URI.
    """

    timeout = 60

    def test_certificatesActOnTheirTenants(self):
        return Deferred.fromCoroutine(self._certs())

    async def _certs(self):
        from twisted.internet import reactor as r
        from twisted.web.client import HTTPConnectionPool

        from fangs.orchestrator import tap
        from fangs.runner.client import makeHTTPClient
        from tests.procs import freePort
        from tests.test_tls import Certs

        certs = Certs(self.mktemp())
        certs.client("alice-a", "operator", scopes=("read", "write"), tenant="team-a")
        certs.client("bob-b", "operator", scopes=("read", "write"), tenant="team-b")
        certs.client("root", "operator", scopes=("admin",))
        port = freePort()
        options = tap.Options()
        options.parseOptions(["--addr", "127.0.0.1:%d" % (port,), "--db", self.mktemp() + ".db", "--poll-wait", "2",
                              "--tls-cert", certs.path("server.pem"), "--tls-key", certs.path("server-key.pem"),
                              "--tls-client-ca", certs.path("ca.pem"), "--tls-crl", certs.path("crl.pem")])
        svc = tap.makeService(options)
        svc.privilegedStartService()
        svc.startService()
        self.addCleanup(svc.stopService)
        url = "https://127.0.0.1:%d" % (port,)

        def client(name):
            pool = HTTPConnectionPool(r, persistent=False)
            self.addCleanup(pool.closeCachedConnections)
            return makeHTTPClient(r, certs.read("ca.pem"), certs.read(name + ".pem"), certs.read(name + "-key.pem"), pool=pool)

        async def call(name, method, path, body=None, tenant=None):
            headers = {}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = ["application/json"]
            if tenant:
                headers["X-Fangs-Tenant"] = [tenant]
            resp = await client(name).request(method, url + path, data=data, headers=headers)
            content = await resp.content()
            return resp.code, json.loads(content) if content[:1] == b"{" else content

        for _ in range(50):
            try:
                code, _ = await call("alice-a", "GET", "/v1/health")
                break
            except Exception:
                await sleep(0.1)
        body = {"Job": {"kind": "sandbox_scan", "package_name": "left-pad", "version": "1.3.0",
                        "sandbox": {"image": "fangs-sandbox/node:20"}}}
        code, queued = await call("alice-a", "POST", "/v1/scans", body)
        self.assertEqual(code, 202, queued)
        runID = queued["run_id"]
        code, run = await call("alice-a", "GET", "/v1/runs/" + runID)
        self.assertEqual((code, run["tenant"]), (200, "team-a"))
        code, err = await call("bob-b", "GET", "/v1/runs/" + runID)
        self.assertEqual((code, err["error"]["code"]), (404, "unknown_run"))
        code, err = await call("bob-b", "GET", "/v1/runs", tenant="team-a")
        self.assertEqual((code, err["error"]["code"]), (403, "tenant_forbidden"))
        code, _ = await call("root", "GET", "/v1/runs/" + runID)
        self.assertEqual(code, 404)  # the all-tenant admin acts on default...
        code, run = await call("root", "GET", "/v1/runs/" + runID, tenant="team-a")
        self.assertEqual((code, run["run_id"]), (200, runID))  # ...or on the tenant it selects
        code, health = await call("root", "GET", "/v1/admin/health")
        self.assertEqual(health["queue"]["by_tenant"], {"team-a": 1})
