"""
Tenants: every principal belongs to one tenant (or is an admin of all), every
route declares who may call it, another tenant's objects are 404 on every
route, a release watched by two tenants is scanned once and judged against
each tenant's own baseline, and the stream and metrics are tenant-filtered.

The isolation test walks the live Klein URL map: a route added without an
entry in L{ROUTES} fails it.
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Optional, Tuple

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from fangs.orchestrator import api as A
from fangs.orchestrator.api import OrchestratorAPI
from fangs.orchestrator.db.artifacts import RunArtifact
from fangs.orchestrator.auth import Authenticator
from fangs.orchestrator.config import OrchestratorConfig
from fangs.orchestrator.stream import RunStream, RunStreamPublisher, StreamFilter
from fangs.tenants import TenantError, checkTenant, selectTenant
from tests.orchestrator.helpers import BASE, InMemoryOrchestrator, batchLine, contentHeaders, dnsEvent, execEvent

A_TENANT = "team-a"
B_TENANT = "team-b"
#: Names only tenant A's objects carry: none may appear in what B sees.
A_PACKAGE = "a-private-pkg"
A_NOTIFIER = "a-private-hook"
A_ALLOW_VALUE = "a-private-allowed.example"
A_HOST = "a-private-exfil.example"
SHA = "ab" * 64

BENIGN = [dnsEvent("registry.npmjs.org")]
#: New behaviour: a deviation against a baseline, a first run's baseline.
EXFIL = BENIGN + [dnsEvent(A_HOST), execEvent("/usr/bin/curl")]


def _flush(o: InMemoryOrchestrator) -> None:
    o.treq.flush()


class Tenants:
    """
    An in-memory orchestrator in token mode with tokens of two tenants, an
    admin of all tenants and a runner.
    """

    def __init__(self, test: SynchronousTestCase) -> None:
        self.test = test
        self.o = o = InMemoryOrchestrator(test, config=OrchestratorConfig(notifierAllowPrivate=("127.0.0.0/8",)))
        self.stream = RunStream(o.clock, o.store, keepalive=3600)
        test.successResultOf(Deferred.fromCoroutine(self.stream.start()))
        test.addCleanup(self.stream.stop)
        o.core.runEvents = RunStreamPublisher(self.stream, o.store)
        o.analyzer.listeners.append(o.core.runEvents.verdict)
        o.api = OrchestratorAPI(o.core, Authenticator("token", o.store, clock=o.clock), stream=self.stream)
        o.treq = StubTreq(o.api.resource())
        self.tokens: Dict[str, Dict[str, Any]] = {}
        for name, scopes, tenant in (
            ("all", ["orchestrator:admin"], "*"),
            ("a", ["orchestrator:admin"], A_TENANT),
            ("b", ["orchestrator:admin"], B_TENANT),
            ("a-read", ["orchestrator:read"], A_TENANT),
            ("worker-1", ["runner"], "*"),
        ):
            self.tokens[name] = test.successResultOf(Deferred.fromCoroutine(o.core.createToken(name, scopes, "test", tenant)))

    def headers(self, who: str, tenant: Optional[str] = None) -> Dict[str, List[str]]:
        h = {"Authorization": ["Bearer " + self.tokens[who]["token"]]}
        if tenant is not None:
            h["X-Fangs-Tenant"] = [tenant]
        return h

    def call(self, who: str, method: str, path: str, body: Any = None, tenant: Optional[str] = None,
             raw: Optional[bytes] = None) -> Tuple[int, Any]:
        return self.o.call(method, path, body, self.headers(who, tenant), raw)

    def rawCall(self, who: str, method: str, path: str, tenant: Optional[str] = None) -> Tuple[int, bytes]:
        headers = contentHeaders(path, b"{}" if method in ("POST", "PUT", "PATCH") else None, self.headers(who, tenant))
        d = self.o.treq.request(method, BASE + path, data=b"{}" if method in ("POST", "PUT", "PATCH") else None,
                                headers=headers, allow_redirects=False)
        self.o.treq.flush()
        results: List[Any] = []
        d.addBoth(results.append)
        self.test.assertTrue(results, "%s %s did not answer" % (method, path))
        response = results[0]
        return response.code, self.test.successResultOf(response.content())

    # -- a scan, as the watcher and a runner make it --------------------------------

    def scan(self, who: str, package: str, version: str, events: List[dict], key: Optional[str] = "watch") -> str:
        body = {"Job": {"kind": "sandbox_scan", "package_name": package, "version": version,
                        "sandbox": {"image": "fangs-sandbox/node:20"}}}
        headers = {"Idempotency-Key": "watch:%s@%s" % (package, version)} if key == "watch" else {}
        h = self.headers(who)
        h.update({k: [v] for k, v in headers.items()})
        code, reply = self.o.call("POST", "/v1/scans", body, h)
        self.test.assertEqual(code, 202, reply)
        return reply["run_id"]

    def run(self, runID: str, events: List[dict]) -> None:
        code, _ = self.call("worker-1", "POST", "/v1/runners/register", {"runner_id": "worker-1", "proto_version": 1})
        self.test.assertEqual(code, 200)
        d = self.o.treq.request("GET", BASE + "/v1/runners/worker-1/jobs", headers=self.headers("worker-1"))
        self.o.treq.flush()
        if self.o.dispatcher.waiterCount():
            self.o.clock.advance(self.o.dispatcher.pollWait)
        response = self.test.successResultOf(d)
        self.test.assertEqual(response.code, 200)
        self.test.successResultOf(response.content())
        code, ack = self.call("worker-1", "POST", "/v1/runs/%s/events" % (runID,), raw=batchLine(1, events))
        self.test.assertEqual(code, 200, ack)
        code, ack = self.call("worker-1", "POST", "/v1/runs/%s/result" % (runID,),
                              {"status": "ok", "events_emitted": len(events), "events_dropped": 0})
        self.test.assertEqual(code, 200, ack)

    def scanned(self, who: str, package: str, version: str, events: List[dict]) -> str:
        runID = self.scan(who, package, version, events)
        self.run(runID, events)
        return runID


class TenantNameTests(SynchronousTestCase):
    def test_names(self) -> None:
        for good in ("default", "a", "team-a", "0", "a" * 63):
            self.assertEqual(checkTenant(good), good)
        for bad in ("", "A", "-a", "a_b", "a" * 64, "a/b", "*", " a", 5, None):
            self.assertRaises(TenantError, checkTenant, bad)
        self.assertEqual(checkTenant("*", allowAll=True), "*")

    def test_select(self) -> None:
        self.assertEqual(selectTenant("*", None), None)
        self.assertEqual(selectTenant("*", "team-a"), "team-a")
        self.assertEqual(selectTenant("team-a", None), "team-a")
        self.assertEqual(selectTenant("team-a", "team-a"), "team-a")
        self.assertRaises(PermissionError, selectTenant, "team-a", "team-b")
        self.assertRaises(TenantError, selectTenant, "*", "Bad!")


# ---------------------------------------------------------------------------
# Every route, as another tenant


class IsolationFixture:
    """
    Tenant A's objects, one of each kind, created through the API.
    """

    def __init__(self, t: Tenants) -> None:
        self.t = t
        test = t.test
        for who, tenant in (("a", None), ("b", None)):
            code, reply = t.call(who, "POST", "/v1/packages", {"name": "shared-pkg"})
            test.assertEqual(code, 201, reply)
        code, reply = t.call("a", "POST", "/v1/packages", {"name": A_PACKAGE})
        test.assertEqual(code, 201, reply)
        # A's first run of its private package is its baseline, the second
        # deviates: A has a run, deviations, a pending review.
        self.baselineRun = t.scanned("a", A_PACKAGE, "1.0.0", BENIGN)
        self.run = t.scanned("a", A_PACKAGE, "1.0.1", EXFIL)
        code, run = t.call("a", "GET", "/v1/runs/" + self.run)
        test.assertEqual((code, run["verdict"]), (200, "deviations"), run)
        self.deviation = run["deviations"][0]["id"]
        code, reply = t.call("a", "POST", "/v1/allow", {"kind": "dns", "value": A_ALLOW_VALUE, "note": "A's own"})
        test.assertEqual(code, 201, reply)
        self.allow = reply["id"]
        code, reply = t.call("a", "POST", "/v1/notifiers", {"name": A_NOTIFIER, "url": "http://127.0.0.1:9/a-private",
                                                            "template": "generic"})
        test.assertEqual(code, 201, reply)
        code, reply = t.call("a", "POST", "/v1/tokens", {"name": "a-private-token", "scopes": ["orchestrator:read"]})
        test.assertEqual((code, reply["tenant"]), (201, A_TENANT), reply)
        self.token = reply["id"]
        st = t.o.store
        test.successResultOf(st.putArtifact(SHA, b"tarball", t.o.core.nowNs()))
        test.successResultOf(st.linkArtifact(RunArtifact(self.run, SHA, "verified", "", "sha512-x", "https://r/x.tgz", 7,
                                                         t.o.core.nowNs())))
        # What of A must never reach B (the ids B asks for are echoed in
        # "not found" messages exactly as a random id is, and checked so).
        self.secrets = [A_PACKAGE, A_NOTIFIER, A_ALLOW_VALUE, A_HOST, "a-private-token", self.baselineRun, self.run,
                        self.deviation, self.allow, self.token, SHA]

    def values(self) -> Dict[str, str]:
        return {
            "runID": self.run,
            "runnerID": "worker-1",
            "sha512": SHA,
            "deviationID": self.deviation,
            "tokenID": self.token,
            "entryID": self.allow,
            "name": A_NOTIFIER,
            "package": A_PACKAGE,
        }


#: Every route of the live URL map, as C{rule -> how to attack it}:
#:  - C{"ids"}: path arguments filled with tenant A's ids (L{IsolationFixture.values});
#:  - a list of paths: the route's concrete paths to try with A's ids;
#:  - C{"list"}: no id; B gets its own view, which must hold nothing of A's;
#:  - C{"public"}: unauthenticated; must hold nothing of A's;
#:  - C{"runner"}: a runner route, refused to an operator credential;
#:  - C{"stream"}: the run stream (L{StreamTests}).
ROUTES: Dict[str, Any] = {
    "/v1/health": "public",
    "/v1/admin/health": "list",
    "/v1/runners/register": "runner",
    "/v1/runners": "list",
    "/v1/runners/<runnerID>/heartbeat": "runner",
    "/v1/runners/<runnerID>/jobs": "runner",
    "/v1/scans": "list",
    "/v1/runs/<runID>/events": "ids",  # GET export (POST is the runner's)
    "/v1/runs/<runID>/result": "runner",
    "/v1/runs": "list",
    "/v1/runs/stream": "stream",
    "/v1/runs/<runID>/steps": "ids",
    "/v1/runs/<runID>": "ids",
    "/v1/artifacts/<sha512>": "ids",
    "/v1/runs/<runID>/promote": "ids",
    "/v1/runs/<runID>/reject": "ids",
    "/v1/runs/<runID>/reanalyze": "ids",
    "/v1/runs/<runID>/cancel": "ids",
    "/v1/pending": "list",
    "/v1/deviations": "list",
    "/v1/deviations/<deviationID>": "ids",
    "/v1/packages": "list",
    "/v1/packages/<path:rest>": ["/v1/packages/{package}", "/v1/packages/{package}/baseline",
                                 "/v1/packages/{package}/releases"],
    "/v1/tokens": "list",
    "/v1/tokens/<tokenID>": "ids",
    "/v1/admin/tokens": "list",
    "/v1/admin/tokens/<tokenID>": "ids",
    "/v1/audit": "list",
    "/v1/allow": "list",
    "/v1/allow/<entryID>": "ids",
    "/v1/notifiers": "list",
    "/v1/notifiers/<name>": "ids",
    "/v1/notifiers/<name>/test": "ids",
    "/v1/notifiers/<name>/deliveries": "ids",
    "/metrics": "list",
    "/v1/metrics": "list",
    "/ui/login": "public",
    "/ui/logout": "public",
    "/ui/static/": "public",
    "/ui/static/<path:__rest__>": "public",
    "/ui/": "list",
    "/ui/<path:__rest__>": ["GET /ui/runs/{runID}", "POST /ui/runs/{runID}/decide", "GET /ui/packages/{package}",
                            "POST /ui/allowlist/{entryID}/remove"],
    "/": "public",
}

_ARG = re.compile(r"<(?:[a-z]+:)?([A-Za-z_0-9]+)>")


def _fill(path: str, values: Dict[str, str]) -> str:
    return _ARG.sub(lambda m: values[m.group(1)], path).format(**values)


def _other(values: Dict[str, str]) -> Dict[str, str]:
    """
    Ids of the same shape that exist nowhere.
    """
    return {"package": "no-such-pkg", "runID": "f" * 32, "runnerID": "worker-1", "sha512": "cd" * 64, "deviationID": "e" * 32,
            "tokenID": "0123456789abcdef", "entryID": "al00000000000000", "name": "no-such-hook"}


class IsolationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.t = Tenants(self)
        self.a = IsolationFixture(self.t)

    def rules(self) -> List[Any]:
        return list(self.t.o.api.app.url_map.iter_rules())

    def test_everyRouteHasAnEntry(self) -> None:
        """
        A route added to the API without a line in L{ROUTES} (and so without
        an isolation check) fails here; so does one without a declared access.
        """
        rules = {r.rule for r in self.rules()}
        self.assertEqual(sorted(rules - set(ROUTES)), [])
        self.assertEqual(sorted(set(ROUTES) - rules), [])
        for r in self.rules():
            self.assertIn(r.endpoint, A.ROUTE_ACCESS, r.rule)

    def assertNoSecrets(self, body: bytes, path: str, allowed: Tuple[str, ...] = ()) -> None:
        text = body.decode("utf-8", "replace")
        for secret in self.a.secrets:
            if secret in allowed:
                continue
            self.assertNotIn(secret, text, "%s leaked %r" % (path, secret))

    def attack(self, rule: Any) -> None:
        spec = ROUTES[rule.rule]
        values = self.a.values()
        methods = sorted((rule.methods or {"GET", "POST", "PUT", "DELETE"}) - {"HEAD", "OPTIONS"})
        if spec == "stream":
            return  # StreamTests
        if spec in ("public", "list", "runner"):
            paths = [_fill(rule.rule.replace("<path:__rest__>", "x"), values)] if "<" not in rule.rule or spec != "list" else []
            if "<" in rule.rule and spec == "runner":
                paths = [_fill(rule.rule, values)]
            elif "<" not in rule.rule:
                paths = [rule.rule]
            for path in paths:
                for method in methods:
                    code, body = self.t.rawCall("b", method, path)
                    self.assertLess(code, 500, (method, path, body))
                    if spec == "runner":
                        self.assertEqual(code, 403, (method, path, body))
                    self.assertNoSecrets(body, path)
            return
        paths = [_fill(p, values) for p in spec] if isinstance(spec, list) else [_fill(rule.rule, values)]
        others = [_fill(p, _other(values)) for p in spec] if isinstance(spec, list) else [_fill(rule.rule, _other(values))]
        for path, other in zip(paths, others):
            pathMethods = methods
            if " " in path:  # "METHOD path": a dashboard page under the /ui/ branch
                only, path = path.split(" ", 1)
                other = other.split(" ", 1)[1]
                pathMethods = [only]
            asked = tuple(v for v in self.a.secrets if v in path)  # echoed as for a name that does not exist
            for method in pathMethods:
                code, body = self.t.rawCall("b", method, path)
                self.assertIn(code, (403, 404), (method, path, body))
                self.assertNoSecrets(body, path, asked)
                if path.startswith("/v1/") and code == 404:
                    # Exactly what a non-existent id gets.
                    code2, body2 = self.t.rawCall("b", method, other)
                    self.assertEqual(code2, code, (method, other, body2))
                    mine = json.loads(body)["error"]
                    theirs = json.loads(body2)["error"]
                    self.assertEqual(set(mine), set(theirs))
                    self.assertEqual(mine["code"], theirs["code"], (method, path))
                    if "/v1/packages/" in path:
                        mine["message"] = mine["message"].replace(A_PACKAGE, "no-such-pkg")
                    for key, value in values.items():  # the asked id (or its prefix) is echoed
                        mine["message"] = mine["message"].replace(value, _other(values)[key])
                        mine["message"] = mine["message"].replace(value[:16], _other(values)[key][:16])
                    self.assertEqual(mine["message"], theirs["message"])
                # B naming A's tenant is refused outright.
                if A.ROUTE_ACCESS[rule.endpoint].kind == "operator":
                    code, body = self.t.rawCall("b", method, path, tenant=A_TENANT)
                    self.assertEqual(code, 403, (method, path, body))
                    self.assertEqual(json.loads(body)["error"]["code"], "tenant_forbidden", (method, path))

    def test_everyRouteAsAnotherTenant(self) -> None:
        """
        Every route with every method, called by tenant B with tenant A's
        ids, is 404 or 403 and shows nothing of A's; B's own views (lists,
        health, metrics, dashboard) hold nothing of A's either.
        """
        for rule in self.rules():
            self.attack(rule)
        for page in ("/ui/", "/ui/runs", "/ui/pending", "/ui/deviations", "/ui/packages", "/ui/allowlist",
                     "/ui/notifiers", "/ui/config", "/v1/runs?package=" + A_PACKAGE, "/v1/deviations?run=" + self.a.run):
            code, body = self.t.rawCall("b", "GET", page)
            self.assertEqual(code, 200, (page, body))
            self.assertNoSecrets(body, page, (self.a.run, A_PACKAGE) if "?" in page else ())
            # ...while A's own dashboard shows them.
        code, body = self.t.rawCall("a", "GET", "/ui/packages")
        self.assertIn(A_PACKAGE.encode(), body)
        # A still sees its own.
        code, run = self.t.call("a", "GET", "/v1/runs/" + self.a.run)
        self.assertEqual((code, run["run_id"]), (200, self.a.run))
        code, _ = self.t.call("a", "GET", "/v1/artifacts/" + SHA)
        self.assertEqual(code, 200)

    def test_allTenantAdminSelects(self) -> None:
        """
        The admin of all tenants acts on C{default} without a header, on A
        with C{X-Fangs-Tenant: team-a}.
        """
        code, _ = self.t.call("all", "GET", "/v1/runs/" + self.a.run)
        self.assertEqual(code, 404)
        code, run = self.t.call("all", "GET", "/v1/runs/" + self.a.run, tenant=A_TENANT)
        self.assertEqual((code, run["tenant"]), (200, A_TENANT))
        code, reply = self.t.call("all", "GET", "/v1/packages", tenant=A_TENANT)
        self.assertEqual(sorted(p["name"] for p in reply["packages"]), [A_PACKAGE, "shared-pkg"])
        code, reply = self.t.call("all", "GET", "/v1/packages")
        self.assertEqual(reply["packages"], [])
        code, body = self.t.call("all", "GET", "/v1/runs", tenant="Not A Tenant")
        self.assertEqual((code, body["error"]["code"]), (400, "bad_request"))

    def test_auditPerTenant(self) -> None:
        code, a = self.t.call("a", "GET", "/v1/audit")
        self.assertEqual(code, 200, a)
        actions = {(e["action"], e["target"]) for e in a["entries"]}
        self.assertIn(("package.add", "package:" + A_PACKAGE), actions)
        self.assertIn(("allow.add", "allow:" + self.a.allow), actions)
        self.assertIn(("notifier.add", "notifier:" + A_NOTIFIER), actions)
        self.assertIn(("token.create", "token:" + self.a.token), actions)
        code, one = self.t.call("a", "GET", "/v1/audit?target=package:" + A_PACKAGE)
        self.assertEqual([e["action"] for e in one["entries"]], ["package.add"])
        code, b = self.t.call("b", "GET", "/v1/audit")
        self.assertEqual({e["target"] for e in b["entries"]}, {"package:shared-pkg", "token:" + self.t.tokens["b"]["id"]})
        code, b = self.t.call("b", "GET", "/v1/audit?target=package:" + A_PACKAGE)
        self.assertEqual(b["entries"], [])

    def test_runnersShowOnlyOwnActiveRuns(self) -> None:
        t = self.t
        runID = t.scan("a", A_PACKAGE, "9.0.0", BENIGN)
        code, _ = t.call("worker-1", "POST", "/v1/runners/register", {"runner_id": "worker-1", "proto_version": 1})
        code, _ = t.call("worker-1", "POST", "/v1/runners/worker-1/heartbeat", {"active_run_ids": [runID]})
        self.assertEqual(code, 200)
        _, a = t.call("a", "GET", "/v1/runners")
        _, b = t.call("b", "GET", "/v1/runners")
        _, admin = t.call("all", "GET", "/v1/runners")
        self.assertEqual(a["runners"][0]["active_run_ids"], [runID])
        self.assertEqual(b["runners"][0]["active_run_ids"], [])
        self.assertEqual(admin["runners"][0]["active_run_ids"], [runID])
        code, page = t.rawCall("b", "GET", "/ui/")
        self.assertNotIn(runID.encode(), page)

    def test_tenantHeaderOwnTenant(self) -> None:
        code, run = self.t.call("a", "GET", "/v1/runs/" + self.a.run, tenant=A_TENANT)
        self.assertEqual(code, 200)
        code, body = self.t.call("a-read", "GET", "/v1/runs", tenant=B_TENANT)
        self.assertEqual((code, body["error"]["code"]), (403, "tenant_forbidden"))


class TokenTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.t = Tenants(self)

    def test_tenantAdminMintsOwnTenantOnly(self) -> None:
        code, reply = self.t.call("a", "POST", "/v1/tokens", {"name": "x", "scopes": ["orchestrator:write"]})
        self.assertEqual((code, reply["tenant"]), (201, A_TENANT))
        code, reply = self.t.call("a", "POST", "/v1/admin/tokens", {"name": "y", "scopes": ["orchestrator:read"], "tenant": B_TENANT})
        self.assertEqual((code, reply["error"]["code"]), (403, "tenant_forbidden"))
        code, reply = self.t.call("a", "POST", "/v1/tokens", {"name": "z", "scopes": ["orchestrator:admin"], "tenant": "*"})
        self.assertEqual(code, 403)
        code, reply = self.t.call("a", "POST", "/v1/tokens", {"name": "w", "scopes": ["runner"]})
        self.assertEqual((code, reply["error"]["code"]), (403, "tenant_forbidden"))
        code, reply = self.t.call("a", "POST", "/v1/tokens", {"name": "v", "scopes": ["orchestrator:read"], "tenant": "BAD"})
        self.assertEqual(code, 400)

    def test_allTenantAdminMintsAnyTenant(self) -> None:
        code, reply = self.t.call("all", "POST", "/v1/tokens", {"name": "c", "scopes": ["orchestrator:read"], "tenant": "team-c"})
        self.assertEqual((code, reply["tenant"]), (201, "team-c"))
        code, reply = self.t.call("all", "POST", "/v1/tokens", {"name": "d", "scopes": ["orchestrator:read"]})
        self.assertEqual(reply["tenant"], "default")
        code, reply = self.t.call("all", "POST", "/v1/tokens", {"name": "e", "scopes": ["orchestrator:admin"], "tenant": "*"})
        self.assertEqual(reply["tenant"], "*")
        # The new token is of team-c: it sees team-c, and naming another is refused.
        h = {"Authorization": ["Bearer " + self.t.tokens["all"]["token"]]}
        code, listed = self.t.o.call("GET", "/v1/tokens", None, h)
        self.assertEqual({x["name"]: x["tenant"] for x in listed["tokens"]}["c"], "team-c")

    def test_listingAndRevocationPerTenant(self) -> None:
        code, listed = self.t.call("a", "GET", "/v1/tokens")
        self.assertEqual(sorted(x["name"] for x in listed["tokens"]), ["a", "a-read"])
        self.assertTrue(all(x["tenant"] == A_TENANT for x in listed["tokens"]))
        code, listed = self.t.call("all", "GET", "/v1/tokens")
        self.assertEqual(len(listed["tokens"]), 5)
        bID = self.t.tokens["b"]["id"]
        code, _ = self.t.call("a", "DELETE", "/v1/tokens/" + bID)
        self.assertEqual(code, 404)
        code, _ = self.t.call("b", "GET", "/v1/packages")
        self.assertEqual(code, 200)
        code, _ = self.t.call("all", "DELETE", "/v1/tokens/" + bID)
        self.assertEqual(code, 200)
        code, _ = self.t.call("b", "GET", "/v1/packages")
        self.assertEqual(code, 401)

    def test_initialAdminIsAllTenants(self) -> None:
        created = self.successResultOf(Deferred.fromCoroutine(
            self.t.o.core.createToken("initial-admin", ["orchestrator:admin"], "twistd --init-admin-token")))
        self.assertEqual(created["tenant"], "*")


# ---------------------------------------------------------------------------
# One scan, judged by each tenant


class SharedScanTests(SynchronousTestCase):
    def test_scannedOnceJudgedPerTenant(self) -> None:
        """
        A and B watch one package; A has a baseline of it, B has none.  The
        new release is one run (both tenants' watch keys name it), linked to
        both; A's verdict is deviations, B's first run is its baseline; each
        sees only its own deviations.
        """
        t = Tenants(self)
        for who in ("a", "b"):
            self.assertEqual(t.call(who, "POST", "/v1/packages", {"name": "shared-pkg"})[0], 201)
        t.scanned("a", "shared-pkg", "1.0.0", BENIGN)
        runA = t.scan("a", "shared-pkg", "1.0.1", EXFIL)
        runB = t.scan("b", "shared-pkg", "1.0.1", EXFIL)
        self.assertEqual(runA, runB)
        self.assertEqual(self.successResultOf(t.o.store.runTenants(runA)), [A_TENANT, B_TENANT])
        self.assertEqual(self.successResultOf(t.o.store.queueDepthByTenant()), {A_TENANT: 1, B_TENANT: 1})
        t.run(runA, EXFIL)
        code, a = t.call("a", "GET", "/v1/runs/" + runA)
        code, b = t.call("b", "GET", "/v1/runs/" + runA)
        self.assertEqual((a["verdict"], a["tenant"]), ("deviations", A_TENANT))
        self.assertEqual((b["verdict"], b["tenant"]), ("baseline", B_TENANT))
        self.assertTrue(a["deviations"])
        self.assertEqual(b["deviations"], [])
        self.assertEqual(a["event_counts"], b["event_counts"])  # the evidence is shared
        _, devA = t.call("a", "GET", "/v1/deviations")
        _, devB = t.call("b", "GET", "/v1/deviations")
        self.assertTrue(devA["deviations"])
        self.assertEqual(devB["deviations"], [])
        _, pendA = t.call("a", "GET", "/v1/pending")
        _, pendB = t.call("b", "GET", "/v1/pending")
        self.assertEqual([r["run_id"] for r in pendA["runs"]], [runA])
        self.assertEqual(pendB["runs"], [])
        # B's deviation-free judgement is its own: A's deviation is 404 for B.
        code, _ = t.call("b", "GET", "/v1/deviations/" + devA["deviations"][0]["id"])
        self.assertEqual(code, 404)
        # A decision is one tenant's: A rejects, B's verdict stays.
        code, rejected = t.call("a", "POST", "/v1/runs/%s/reject" % (runA,), {})
        self.assertEqual((code, rejected["decision"]), (200, "rejected"))
        _, b = t.call("b", "GET", "/v1/runs/" + runA)
        self.assertEqual((b["verdict"], b["decision"]), ("baseline", None))
        # B's baseline is B's: A's is untouched by B's first run.
        _, baseA = t.call("a", "GET", "/v1/packages/shared-pkg/baseline")
        _, baseB = t.call("b", "GET", "/v1/packages/shared-pkg/baseline")
        self.assertNotIn(A_HOST, json.dumps(baseA))
        self.assertIn(A_HOST, json.dumps(baseB))
        # A shared run cannot be cancelled by one tenant.
        runC = t.scan("a", "shared-pkg", "1.0.2", BENIGN)
        t.scan("b", "shared-pkg", "1.0.2", BENIGN)
        code, body = t.call("a", "POST", "/v1/runs/%s/cancel" % (runC,), {})
        self.assertEqual((code, body["error"]["code"]), (409, "run_shared"))

    def test_linkedAfterFinishIsJudged(self) -> None:
        """
        A tenant that starts watching a release already scanned gets the run
        judged against its own baseline at once.
        """
        t = Tenants(self)
        runID = t.scanned("a", "shared-pkg", "2.0.0", EXFIL)
        self.assertEqual(t.scan("b", "shared-pkg", "2.0.0", EXFIL), runID)
        code, b = t.call("b", "GET", "/v1/runs/" + runID)
        self.assertEqual((code, b["verdict"]), (200, "baseline"))

    def test_notificationsPerTenant(self) -> None:
        """
        A's notifier is told of A's deviations; B's notifier of the same name
        hears nothing of the run B judged clean of deviations.
        """
        t = Tenants(self)
        for who in ("a", "b"):
            code, reply = t.call(who, "POST", "/v1/notifiers", {"name": "hook", "url": "http://127.0.0.1:9/" + who,
                                                               "template": "generic"})
            self.assertEqual(code, 201, reply)
        t.scanned("a", "shared-pkg", "1.0.0", BENIGN)
        runID = t.scan("a", "shared-pkg", "1.0.1", EXFIL)
        t.scan("b", "shared-pkg", "1.0.1", EXFIL)
        t.run(runID, EXFIL)
        self.assertEqual([r["notifier_name"] for r in self.successResultOf(t.o.store.outboxFor(runID, tenant=A_TENANT))], ["hook"])
        self.assertEqual(self.successResultOf(t.o.store.outboxFor(runID, tenant=B_TENANT)), [])
        due = self.successResultOf(t.o.store.dueNotifications(t.o.core.nowNs() + 1, 10))
        self.assertEqual([d["url"] for d in due], ["http://127.0.0.1:9/a"])


# ---------------------------------------------------------------------------
# Stream, metrics, health


class StreamTests(SynchronousTestCase):
    def lines(self, t: Tenants, flt: StreamFilter, since: int = 0) -> List[Dict[str, Any]]:
        got: List[bytes] = []
        self.successResultOf(Deferred.fromCoroutine(t.stream.subscribe(got.append, lambda: None, flt, since)))
        return [json.loads(x) for x in b"".join(got).splitlines() if b'"run_id"' in x]

    def test_linesCarryTenantAndAreFiltered(self) -> None:
        t = Tenants(self)
        t.scanned("a", "shared-pkg", "1.0.0", BENIGN)
        shared = t.scan("a", "shared-pkg", "1.0.1", EXFIL)
        t.scan("b", "shared-pkg", "1.0.1", EXFIL)
        t.run(shared, EXFIL)
        own = t.scanned("a", A_PACKAGE, "1.0.0", BENIGN)
        every = self.lines(t, StreamFilter())
        self.assertTrue(all(line["tenant"] in (A_TENANT, B_TENANT) for line in every))
        self.assertEqual({line["run_id"] for line in every if line["tenant"] == B_TENANT}, {shared})
        completed = {(line["tenant"], line["verdict"]) for line in every if line["type"] == "run.completed" and line["run_id"] == shared}
        self.assertEqual(completed, {(A_TENANT, "deviations"), (B_TENANT, "baseline")})
        onlyB = self.lines(t, StreamFilter(tenant=B_TENANT))
        self.assertNotIn(own, json.dumps(onlyB))

    def test_routeForcesTheTenant(self) -> None:
        """
        The stream route fixes a tenant principal's filter to its tenant
        (asking for another is refused); an all-tenant admin sees all or
        the one it selects.
        """
        t = Tenants(self)
        api = t.o.api
        from fangs.orchestrator.auth import Caller, Principal

        tenantA = Caller(Principal("operator", "a", frozenset(), "token", tenant=A_TENANT), A_TENANT, A_TENANT)
        admin = Caller(Principal("operator", "x", frozenset(), "token", tenant="*"), "default", None)
        selecting = Caller(Principal("operator", "x", frozenset(), "token", tenant="*"), B_TENANT, B_TENANT)
        self.assertEqual(api._streamTenant(tenantA, ""), A_TENANT)
        self.assertEqual(api._streamTenant(tenantA, A_TENANT), A_TENANT)
        self.assertRaises(A.TenantForbidden, api._streamTenant, tenantA, B_TENANT)
        self.assertEqual(api._streamTenant(admin, ""), "")
        self.assertEqual(api._streamTenant(admin, B_TENANT), B_TENANT)
        self.assertEqual(api._streamTenant(selecting, ""), B_TENANT)
        code, body = t.rawCall("a", "GET", "/v1/runs/stream?tenant=" + B_TENANT)
        self.assertEqual((code, json.loads(body)["error"]["code"]), (403, "tenant_forbidden"))


class MetricsAndHealthTests(SynchronousTestCase):
    def test_metricsFiltered(self) -> None:
        t = Tenants(self)
        t.scanned("a", A_PACKAGE, "1.0.0", BENIGN)
        t.scanned("a", A_PACKAGE, "1.0.1", EXFIL)
        t.scan("b", "b-pkg", "1.0.0", BENIGN)
        code, a = t.rawCall("a", "GET", "/metrics")
        code, b = t.rawCall("b", "GET", "/v1/metrics")
        code, admin = t.rawCall("all", "GET", "/v1/metrics")
        self.assertIn(b'fangs_runs{state="done"} 2.0', a)
        self.assertIn(b'fangs_runs{state="pending"} 0.0', a)
        self.assertIn(b'fangs_runs{state="done"} 0.0', b)
        self.assertIn(b'fangs_runs{state="pending"} 1.0', b)
        self.assertNotIn(b"fangs_http_requests", b)  # process-wide series are the admins'
        self.assertNotIn(b"tenant=", b)
        self.assertIn(b'fangs_tenant_runs{state="done",tenant="team-a"} 2.0', admin)
        self.assertIn(b'fangs_tenant_runs{state="pending",tenant="team-b"} 1.0', admin)
        self.assertIn(b'fangs_runs{state="done"} 2.0', admin)

    def test_adminHealthByTenant(self) -> None:
        t = Tenants(self)
        t.scan("a", A_PACKAGE, "1.0.0", BENIGN)
        t.scan("b", "b-pkg", "1.0.0", BENIGN)
        t.scan("b", "b-pkg", "1.0.1", BENIGN)
        _, admin = t.call("all", "GET", "/v1/admin/health")
        self.assertEqual(admin["queue"], {"depth": 3, "by_tenant": {A_TENANT: 1, B_TENANT: 2}})
        _, b = t.call("b", "GET", "/v1/admin/health")
        self.assertEqual(b["queue"], {"depth": 2, "by_tenant": {B_TENANT: 2}})
        _, selected = t.call("all", "GET", "/v1/admin/health", tenant=A_TENANT)
        self.assertEqual(selected["queue"], {"depth": 1, "by_tenant": {A_TENANT: 1}})
        _, runners = t.call("a", "GET", "/v1/runners")
        self.assertEqual(runners["queue_depth"], 1)
        got: List[bytes] = []
        self.successResultOf(Deferred.fromCoroutine(t.stream.subscribe(got.append, lambda: None, StreamFilter(tenant=B_TENANT))))
        _, a = t.call("a", "GET", "/v1/admin/health")
        _, b = t.call("b", "GET", "/v1/admin/health")
        _, admin = t.call("all", "GET", "/v1/admin/health")
        self.assertEqual((a["stream_subscribers"], b["stream_subscribers"], admin["stream_subscribers"]), (0, 1, 1))


class SingleTenantTests(SynchronousTestCase):
    def test_noConfiguration(self) -> None:
        """
        Without authentication (and so without tenants configured) every
        object is the default tenant's, as before.
        """
        o = InMemoryOrchestrator(self)
        o.register()
        runID = o.submit()
        code, run = o.call("GET", "/v1/runs/" + runID)
        self.assertEqual((code, run["tenant"]), (200, "default"))
        self.assertEqual(self.successResultOf(o.store.runTenants(runID)), ["default"])
        code, run = o.call("GET", "/v1/runs/" + runID, headers={"X-Fangs-Tenant": ["team-a"]})
        self.assertEqual(code, 404)  # the local all-tenant caller selected another tenant


# ---------------------------------------------------------------------------
# Operator certificates name their tenant


class CertificateTenantTests(SynchronousTestCase):
    def setUp(self) -> None:
        from fangs import pki

        self.pki = pki
        self.ca, self.caKey = pki.makeCA()

    def identity(self, scopes: Any = ("read",), tenant: str = "", **kw: Any) -> Any:
        from fangs.tls import identityOf

        cert, _ = self.pki.issue(self.ca, self.caKey, "carol", "operator", scopes=scopes, tenant=tenant)
        return identityOf(cert, **kw)

    def principal(self, identity: Any) -> Any:
        from fangs.orchestrator.auth import certificateTenant

        return certificateTenant(identity)

    def test_sanURI(self) -> None:
        """
        C{urn:fangs:tenant:<name>} in the certificate's SAN names its tenant.
        """
        identity = self.identity(("read", "write"), tenant=A_TENANT)
        self.assertEqual((identity.kind, identity.tenant), ("operator", A_TENANT))
        self.assertEqual(self.principal(identity), A_TENANT)
        self.assertEqual(self.principal(self.identity(("admin",), tenant="*")), "*")
        self.assertEqual(self.principal(self.identity(("admin",), tenant=B_TENANT)), B_TENANT)

    def test_withoutTenant(self) -> None:
        """
        A certificate naming no tenant: an admin one is every tenant's (the
        install's admin before tenants), any other is the default tenant's.
        """
        self.assertEqual(self.principal(self.identity(("read", "write"))), "default")
        self.assertEqual(self.principal(self.identity(("admin",))), "*")

    def test_configMappingWins(self) -> None:
        identity = self.identity(("read",), tenant=A_TENANT, operatorTenants={"carol": B_TENANT})
        self.assertEqual(identity.tenant, B_TENANT)
        identity = self.identity(("read",), operatorTenants={"dave": B_TENANT})
        self.assertEqual(identity.tenant, "")

    def test_badTenantNamesNoIdentity(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from fangs.tls import identityOf

        cert, key = self.pki.issue(self.ca, self.caKey, "carol", "operator", scopes=("read",))
        for uris in (["fangs://operator/carol?scopes=read", "urn:fangs:tenant:Not_Valid"],
                     ["fangs://operator/carol?scopes=read", "urn:fangs:tenant:team-a", "urn:fangs:tenant:team-b"],
                     ["fangs://operator/carol?scopes=read&tenant=BAD"]):
            builder = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(self.ca.subject)
                       .public_key(key.public_key()).serial_number(x509.random_serial_number())
                       .not_valid_before(cert.not_valid_before_utc).not_valid_after(cert.not_valid_after_utc)
                       .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), critical=False)
                       .add_extension(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value, critical=False))
            self.assertIsNone(identityOf(builder.sign(self.caKey, hashes.SHA256())), uris)
        self.assertRaises(self.pki.PKIError, self.pki.issue, self.ca, self.caKey, "carol", "operator", scopes=("read",),
                          tenant="Bad Tenant")

    def test_queryTenant(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from fangs.tls import identityOf

        cert, key = self.pki.issue(self.ca, self.caKey, "carol", "operator", scopes=("read",))
        builder = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(self.ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(cert.not_valid_before_utc).not_valid_after(cert.not_valid_after_utc)
                   .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(
                       "fangs://operator/carol?scopes=read,write&tenant=team-a")]), critical=False)
                   .add_extension(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value, critical=False))
        self.assertEqual(identityOf(builder.sign(self.caKey, hashes.SHA256())).tenant, A_TENANT)

    def test_configParsed(self) -> None:
        from fangs.orchestrator.config import ConfigError, loadConfig

        path = self.mktemp()
        with open(path, "w") as f:
            f.write("operator_tenants:\n  carol: team-a\n  root: '*'\n")
        self.assertEqual(dict(loadConfig(path).operatorTenants), {"carol": A_TENANT, "root": "*"})
        with open(path, "w") as f:
            f.write("operator_tenants:\n  carol: Not A Tenant\n")
        self.assertRaises(ConfigError, loadConfig, path)

    def test_certificatePrincipalActsOnItsTenant(self) -> None:
        """
        Through the API: an operator certificate of team-b does not see
        team-a's run, and may not select team-a.
        """
        from fangs.tls import Identity

        t = Tenants(self)
        runID = t.scan("a", A_PACKAGE, "1.0.0", BENIGN)
        identity = Identity("operator", "carol", "CN=carol", ("orchestrator:read",), B_TENANT)
        o = t.o
        o.api = OrchestratorAPI(o.core, Authenticator("mtls", o.store, peerIdentity=lambda request: identity, clock=o.clock))
        o.treq = StubTreq(o.api.resource())
        code, _ = o.call("GET", "/v1/runs/" + runID)
        self.assertEqual(code, 404)
        code, body = o.call("GET", "/v1/runs", headers={"X-Fangs-Tenant": [A_TENANT]})
        self.assertEqual((code, body["error"]["code"]), (403, "tenant_forbidden"))
        identity = Identity("operator", "carol", "CN=carol", ("orchestrator:read",), A_TENANT)
        code, run = o.call("GET", "/v1/runs/" + runID)
        self.assertEqual((code, run["tenant"]), (200, A_TENANT))


class SharedWatchTests(SynchronousTestCase):
    def test_watcherScansOnceForTwoTenants(self) -> None:
        """
        The real watcher: default and team-a watch one package; each new
        release is one run, linked to both tenants, each with its own
        releases' watch state.
        """
        from fangs.orchestrator import store as S
        from fangs.orchestrator.watcher import Watcher
        from tests.orchestrator.test_watcher import Harness

        h = Harness(self)
        o = h.o
        for v in ("1.0.0", "2.0.0"):
            h.fake.publish("left-pad", v)
        h.watch("left-pad")
        code, _ = o.call("POST", "/v1/packages", {"name": "left-pad"}, headers={"X-Fangs-Tenant": [A_TENANT]})
        self.assertEqual(code, 201)

        async def submit(request: Any, key: str, tenant: str = "default") -> str:
            return (await o.core.submitScan(request, key, requireTarget=False, tenant=tenant))[0]

        watcher = Watcher(o.clock, o.store, h.client, submit)

        def poll() -> Any:
            d = Deferred.fromCoroutine(watcher.pollOnce())
            for _ in range(600):
                h.stub.flush()
                if d.called:
                    break
                o.clock.advance(0.1)
            return self.successResultOf(d)

        def runs() -> List[Any]:
            return self.successResultOf(o.store.listRuns(S.RunFilter(), 100, None)).items

        stats = poll()
        self.assertEqual((stats.packages, stats.queued, stats.errors), (2, 2, 0))
        [run] = runs()
        self.assertEqual(run.version, "2.0.0")
        self.assertEqual(self.successResultOf(o.store.runTenants(run.id)), ["default", A_TENANT])
        for tenant in ("default", A_TENANT):
            rel = {r["version"]: r for r in self.successResultOf(o.store.listReleases("left-pad", 10, tenant=tenant))}
            self.assertEqual(rel["2.0.0"]["run_id"], run.id)
        h.fake.publish("left-pad", "2.1.0")
        poll()
        self.assertEqual(sorted(r.version for r in runs()), ["2.0.0", "2.1.0"])
        new = [r for r in runs() if r.version == "2.1.0"][0]
        self.assertEqual(sorted(self.successResultOf(o.store.runTenants(new.id))), ["default", A_TENANT])
        # Tenant team-a's view of its runs holds both, as does default's.
        for tenant in ("default", A_TENANT):
            mine = self.successResultOf(o.store.listRuns(S.RunFilter(tenant=tenant), 100, None)).items
            self.assertEqual(sorted(r.version for r in mine), ["2.0.0", "2.1.0"])

    def test_apiScansOfOneReleaseShared(self) -> None:
        """
        Scans submitted through the API without an idempotency key: another
        tenant's identical scan is linked, not queued again; a different
        scan, or the same tenant asking again, is a new run.
        """
        t = Tenants(self)
        runA = t.scan("a", "shared-pkg", "3.0.0", BENIGN, key=None)
        self.assertEqual(t.scan("b", "shared-pkg", "3.0.0", BENIGN, key=None), runA)
        self.assertEqual(self.successResultOf(t.o.store.runTenants(runA)), [A_TENANT, B_TENANT])
        self.assertNotEqual(t.scan("a", "shared-pkg", "3.0.0", BENIGN, key=None), runA)  # a tenant's re-scan
        body = {"Job": {"kind": "sandbox_scan", "package_name": "shared-pkg", "version": "3.0.0", "duration": 5_000_000_000,
                        "sandbox": {"image": "fangs-sandbox/node:20"}}}
        code, reply = t.call("all", "POST", "/v1/scans", body, tenant="team-c")
        self.assertEqual(code, 202, reply)
        self.assertNotIn(reply["run_id"], (runA,))  # another job: another scan
        _, queue = t.call("all", "GET", "/v1/admin/health")
        self.assertEqual(queue["queue"]["by_tenant"], {A_TENANT: 2, B_TENANT: 1, "team-c": 1})
