"""
The web dashboard against a database filled by a real scenario (a baseline
run, a clean run, runs with deviations), through the real Klein resources in
memory: every page renders, values from events are escaped, actions need a
CSRF token and write scope, and the verdicts change.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Optional, Tuple

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from fangs import wire
from fangs.orchestrator import ui
from fangs.orchestrator import store as S
from tests.orchestrator.helpers import InMemoryOrchestrator, execEvent, fileEvent, runScan
from tests.orchestrator.test_review import BENIGN, MALICIOUS

XSS = "<script>alert(1)</script>"
PAGES = ["/ui/", "/ui/?fragment=1", "/ui/packages", "/ui/packages/left-pad", "/ui/packages/@acme/widget", "/ui/runs",
         "/ui/runs?verdict=deviations", "/ui/runs?package=left-pad&state=done", "/ui/pending", "/ui/deviations",
         "/ui/deviations?severity=high", "/ui/allowlist", "/ui/notifiers", "/ui/config"]


def scenario(o: InMemoryOrchestrator) -> Dict[str, str]:
    o.register()
    runs = {
        "baseline": runScan(o, BENIGN),
        "clean": runScan(o, BENIGN),
        "bad": runScan(o, MALICIOUS + [fileEvent("/tmp/" + XSS, pid=300), execEvent("/bin/" + XSS, pid=301)]),
        "bad2": runScan(o, MALICIOUS[:-3]),
        "scoped": runScan(o, BENIGN, package="@acme/widget", version="2.0.0"),
    }
    return runs


class Page:
    def __init__(self, code: int, body: bytes, headers: Any) -> None:
        self.code = code
        self.body = body
        self.text = body.decode("utf-8")
        self.headers = headers

    def header(self, name: str) -> Optional[str]:
        v = self.headers.getRawHeaders(name.encode())
        return v[0].decode() if v else None


class DashboardTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.o = InMemoryOrchestrator(self)
        self.runs = scenario(self.o)

    def get(self, path: str, cookies: Optional[Dict[str, str]] = None) -> Page:
        headers = {b"Cookie": [("; ".join("%s=%s" % kv for kv in cookies.items())).encode()]} if cookies else None
        treq = StubTreq(self.o.api.resource())  # a fresh cookie jar each time
        d = treq.request("GET", "http://orchestrator.test" + path, headers=headers, allow_redirects=False)
        treq.flush()
        r = self.successResultOf(d)
        body = self.successResultOf(r.content())
        return Page(r.code, body, r.headers)

    def post(self, path: str, form: Dict[str, str], cookies: Optional[Dict[str, str]] = None) -> Page:
        headers = {b"Content-Type": [b"application/x-www-form-urlencoded"]}
        if cookies:
            headers[b"Cookie"] = [("; ".join("%s=%s" % kv for kv in cookies.items())).encode()]
        from urllib.parse import urlencode

        treq = StubTreq(self.o.api.resource())
        d = treq.request("POST", "http://orchestrator.test" + path, data=urlencode(form).encode(), headers=headers,
                         allow_redirects=False)
        treq.flush()
        r = self.successResultOf(d)
        return Page(r.code, self.successResultOf(r.content()), r.headers)

    def session(self) -> Tuple[Dict[str, str], str]:
        """
        The CSRF cookie and form token a browser would have after a GET.
        """
        page = self.get("/ui/pending")
        cookie = page.header("Set-Cookie")
        self.assertIsNotNone(cookie)
        value = re.match(r"fangs_csrf=([0-9a-f]{32});", cookie).group(1)
        self.assertIn("HttpOnly", cookie)
        self.assertIn("SameSite=strict", cookie)
        token = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text).group(1)
        return {"fangs_csrf": value}, token

    def verdict(self, runID: str) -> str:
        code, run = self.o.call("GET", "/v1/runs/" + runID)
        return run["verdict"]

    # -- rendering --------------------------------------------------------------

    def test_scenarioVerdicts(self) -> None:
        self.assertEqual(
            {k: self.verdict(v) for k, v in self.runs.items()},
            {"baseline": "baseline", "clean": "clean", "bad": "deviations", "bad2": "deviations", "scoped": "baseline"},
        )

    def test_everyPageRenders(self) -> None:
        for path in PAGES + ["/ui/runs/%s" % (r,) for r in self.runs.values()]:
            page = self.get(path)
            self.assertEqual(page.code, 200, (path, page.text[:500]))
            self.assertEqual(page.header("Content-Type"), "text/html; charset=utf-8")
            self.assertTrue(page.header("Content-Security-Policy").startswith("default-src 'self'"), path)
            self.assertNotIn("<script>", page.text.replace('<script src="/ui/static/fangs.js" defer></script>', ""))
            if "fragment" not in path:
                self.assertIn("<title>FANGS — ", page.text)
                self.assertNotIn(" style=", page.text, path)  # the CSP forbids inline styles

    def test_rootRedirects(self) -> None:
        page = self.get("/")
        self.assertEqual(page.code, 302)
        self.assertEqual(page.header("Location"), "/ui/")

    def test_overview(self) -> None:
        text = self.get("/ui/").text
        self.assertIn("worker-1", text)  # the runner fleet
        self.assertIn('data-refresh-url="/ui/?fragment=1"', text)
        self.assertRegex(text, r"Runs, last 24 h</div><div class=\"big\">5<")
        self.assertRegex(text, r"Pending review</div><div class=\"big hot\">2<")
        # bad2 read a key but reached no network from that process tree: high, not critical.
        self.assertIn('<span class="badge s-critical">critical</span> 1', text)
        self.assertIn('<span class="badge s-high">high</span> 1', text)
        for r in self.runs.values():
            self.assertIn(r[:12], text)

    def test_runDetail(self) -> None:
        text = self.get("/ui/runs/" + self.runs["bad"]).text
        self.assertIn('<span class="badge v-deviations">deviations</span>', text)
        self.assertIn('<span class="badge s-critical">critical</span>', text)
        # Counts per event type, as filter chips.
        self.assertIn('?type=file_access#events">file_access <b>', text)
        # The process tree: pid 300 holds the evidence, its files and connects listed.
        tree = text[text.index('id="tree"'):text.index('id="events"')]
        self.assertIn('data-pid="300"', tree)
        self.assertRegex(tree, r'class="proc depth-\d+ evidence" open id="ev-\d+" data-pid="300"')
        self.assertIn("/root/.ssh/id_rsa", tree)
        self.assertIn("1.2.3.4:31337", tree)
        self.assertIn("exfil.fangs-test.invalid", tree)
        self.assertIn("c2.fangs-test.invalid", tree)
        self.assertRegex(tree, r'<li class="evidence" id="ev-\d+"><span class="chip k-file">file</span> <span class="mono wrap">/root/.ssh/id_rsa')
        # Evidence links resolve to anchors in the tree.
        for anchor in re.findall(r'href="#(ev-\d+)"', text):
            self.assertIn('id="%s"' % (anchor,), text)
        # Cred-tagged events are marked in the events table.
        self.assertRegex(text, r'<tr class="cred[^"]*"><td class="num mono">\d+</td><td><span class="chip t-file_access">file_access</span></td><td class="num mono">300</td><td class="mono">node</td>\s*<td class="mono wrap">/root/.ssh/id_rsa')
        # Action buttons for a pending run.
        self.assertIn('data-action="promoted"', text)
        self.assertIn('data-action="rejected"', text)

    def test_egressAttemptsSummarised(self) -> None:
        """
        The run page lists the egress attempts the gateway stopped, repeats
        counted, a bait carried marked.
        """
        attempt = {"type": wire.EventType.EGRESS_ATTEMPT, "payload": {
            "Header": {"TsNs": 9, "PID": 300, "Type": 12}, "Protocol": "http", "Action": "sinkholed",
            "DestName": "c2.example.test", "DestIP": "127.0.0.1", "DestPort": 80, "Method": "POST",
            "Host": "c2.example.test", "Path": "/x", "Canaries": ["npm_token"], "CommStr": "node"}}
        runID = runScan(self.o, BENIGN + [attempt, attempt])
        text = self.get("/ui/runs/" + runID).text
        self.assertIn("tried POST http://c2.example.test/x carrying the bait npm token (sinkholed) ×2", text)
        self.assertNotIn("c2.example.test/x", self.get("/ui/runs/" + self.runs["clean"]).text)

    def test_eventsFilteredAndPaginated(self) -> None:
        o = self.o
        many = [fileEvent("/tmp/f%d" % (i,), pid=400) for i in range(250)]
        runID = runScan(o, many)
        first = self.get("/ui/runs/%s" % (runID,)).text
        first = first[first.index('id="events"'):]
        rows = re.findall(r"<td class=\"mono wrap\">(/tmp/f\d+)", first)
        self.assertEqual(rows, ["/tmp/f%d" % (i,) for i in range(ui.EVENTS_PER_PAGE)])
        nextURL = re.search(r'<a href="([^"]+)" rel="next">', first).group(1).replace("&amp;", "&")
        second = self.get(nextURL.split("#")[0]).text
        second = second[second.index('id="events"'):]
        rows = re.findall(r"<td class=\"mono wrap\">(/tmp/f\d+)", second)
        self.assertEqual(rows[0], "/tmp/f%d" % (ui.EVENTS_PER_PAGE,))
        filtered = self.get("/ui/runs/%s?type=exec" % (self.runs["bad"],)).text
        events = filtered[filtered.index('id="events"'):]
        self.assertIn("/bin/sh", events)
        self.assertNotIn("/root/.ssh/id_rsa", events)
        self.assertEqual(self.get("/ui/runs/%s?type=bogus" % (runID,)).code, 400)
        self.assertEqual(self.get("/ui/runs/%s?after=x" % (runID,)).code, 400)

    def test_eventValuesAreEscaped(self) -> None:
        for path in ["/ui/runs/" + self.runs["bad"], "/ui/deviations", "/ui/pending",
                     "/ui/runs/%s?type=exec" % (self.runs["bad"],)]:
            text = self.get(path).text
            self.assertNotIn(XSS, text, path)
        text = self.get("/ui/runs/" + self.runs["bad"]).text
        self.assertIn("/tmp/&lt;script&gt;alert(1)&lt;/script&gt;", text)
        self.assertIn("/bin/&lt;script&gt;alert(1)&lt;/script&gt;", text)

    def test_scopedPackage(self) -> None:
        text = self.get("/ui/packages/@acme/widget").text
        self.assertIn("@acme/widget", text)
        self.assertIn("2.0.0", text)
        self.assertIn("Baseline by category", text)
        self.assertIn("net_new_https_host", text)
        self.assertEqual(self.get("/ui/packages/%40acme%2Fwidget").code, 200)
        self.assertEqual(self.get("/ui/packages/nobody-knows").code, 404)
        self.assertEqual(self.get("/ui/packages/BAD NAME").code, 400)

    def test_packageTimelineWithReleases(self) -> None:
        o = self.o
        self.successResultOf(o.store.addPackage("left-pad", "test", o.core.nowNs()))
        text = self.get("/ui/packages/left-pad").text
        self.assertIn("badge b-ok\">watched", text)
        self.assertEqual(text.count('<ol class="timeline">'), 1)
        self.assertIn("1.3.0", text)

    def test_errorsAreHTML(self) -> None:
        for path, code in [("/ui/runs/" + "0" * 32, 404), ("/ui/runs/nothex", 400), ("/ui/nope", 404),
                           ("/ui/runs?verdict=bogus", 400), ("/ui/runs?page=garbage", 400)]:
            page = self.get(path)
            self.assertEqual(page.code, code, path)
            self.assertIn("text/html", page.header("Content-Type"))
            self.assertIn("<title>FANGS — Error", page.text)

    def test_errorsMappedAsTheAPIMapsThem(self) -> None:
        """
        The dashboard's errors go through the API's one mapping: a locked
        database is a 503 with C{Retry-After} on a page as on C{/v1}, and an
        unexpected fault is a 500 that names its trace id and shows nothing
        of the exception.
        """
        import sqlite3

        from fangs.orchestrator.db.engines import SQLiteEngine

        def locked(*a: Any, **kw: Any) -> Any:
            # What the connector raises for SQLite's "database is locked".
            raise SQLiteEngine().classify(sqlite3.OperationalError("database is locked"))

        self.patch(self.o.store, "dashboardPackages", locked)
        page = self.get("/ui/packages")
        self.assertEqual(page.code, 503)
        self.assertEqual(page.header("Retry-After"), "1")
        self.assertIn("text/html", page.header("Content-Type"))
        self.assertIn("locked by another writer", page.text)

        def broken(*a: Any, **kw: Any) -> Any:
            raise KeyError("secret-internal-detail")

        self.patch(self.o.store, "dashboardPackages", broken)
        page = self.get("/ui/packages")
        self.assertEqual(page.code, 500)
        self.assertIn("text/html", page.header("Content-Type"))
        self.assertIn("see the orchestrator log (trace ", page.text)
        self.assertNotIn("secret-internal-detail", page.text)
        self.flushLoggedErrors(KeyError)

        page = self.get("/ui/nope")
        self.assertIn("no route GET /ui/nope", page.text)  # the API's words for a missing route

    def test_pendingHighestSeverityFirst(self) -> None:
        text = self.get("/ui/pending").text
        order = re.findall(r'<section class="panel review sevrow-(\w+)" data-run="(\w+)"', text)
        self.assertEqual({r for _, r in order}, {self.runs["bad"], self.runs["bad2"]})
        self.assertEqual(order[0][0], "critical")

    def test_configPage(self) -> None:
        text = self.get("/ui/config").text
        self.assertIn("/root/.ssh/", text)
        self.assertIn('<span class="badge s-critical">cred</span>', text)

    def test_notifiersEmptyOrGeneric(self) -> None:
        text = self.get("/ui/notifiers").text
        self.assertIn("Delivery history", text)
        self.assertEqual(ui._cell("url", "https://hooks.slack.test/services/T0/B0/SECRET"), "https://hooks.slack.test/…")
        self.assertEqual(ui._cell("body", b"xyz"), "3 bytes")

    # -- actions ----------------------------------------------------------------

    def test_promoteAndReject(self) -> None:
        cookies, token = self.session()
        page = self.post("/ui/runs/%s/decide" % (self.runs["bad"],), {"decision": "promoted", "csrf": token}, cookies)
        self.assertEqual(page.code, 303, page.text[:300])
        location = page.header("Location")
        self.assertTrue(location.startswith("/ui/runs/%s?flash=" % (self.runs["bad"],)), location)
        self.assertEqual(self.verdict(self.runs["bad"]), "baseline")
        shown = self.get(location).text
        self.assertIn("verdict is now baseline", shown)
        self.assertIn('<span class="badge v-baseline">baseline</span>', shown)

        page = self.post("/ui/runs/%s/decide" % (self.runs["bad2"],), {"decision": "rejected", "csrf": token}, cookies)
        self.assertEqual(page.code, 303)
        self.assertEqual(self.verdict(self.runs["bad2"]), "rejected")
        self.assertIn("Nothing waits for review", self.get("/ui/pending").text)
        code, audit = 0, self.successResultOf(self.o.store.auditFor("run:" + self.runs["bad2"]))
        self.assertEqual(audit[-1]["action"], "reject")
        self.assertTrue(audit[-1]["actor"].startswith("dashboard@"))

    def test_actionsNeedCSRF(self) -> None:
        cookies, token = self.session()
        url = "/ui/runs/%s/decide" % (self.runs["bad"],)
        for form, jar in [({"decision": "promoted"}, cookies),
                          ({"decision": "promoted", "csrf": token}, None),
                          ({"decision": "promoted", "csrf": "0" * 64}, cookies),
                          ({"decision": "promoted", "csrf": token}, {"fangs_csrf": "f" * 32})]:
            page = self.post(url, form, jar)
            self.assertEqual(page.code, 403, form)
        self.assertEqual(self.verdict(self.runs["bad"]), "deviations")
        page = self.post(url, {"decision": "explode", "csrf": token}, cookies)
        self.assertEqual(page.code, 400)

    def test_conflictShownAsPage(self) -> None:
        cookies, token = self.session()
        runID = runScan(self.o, BENIGN, status="timeout")
        page = self.post("/ui/runs/%s/decide" % (runID,), {"decision": "promoted", "csrf": token}, cookies)
        self.assertEqual(page.code, 409)
        self.assertIn("incomplete", page.text)

    def test_readOnlyScopeHidesAndRefusesActions(self) -> None:
        request = type("R", (), {"fangsScopes": frozenset({"orchestrator:read"})})()
        self.assertFalse(ui.canWrite(request))
        request.fangsScopes = frozenset({"orchestrator:read", "orchestrator:write"})
        self.assertTrue(ui.canWrite(request))
        self.assertTrue(ui.canWrite(object()))

        original = ui.canWrite
        self.patch(ui.pages, "canWrite", lambda request: False)
        text = self.get("/ui/runs/" + self.runs["bad"]).text
        self.assertNotIn("data-action=", text)
        self.assertNotIn("/decide", self.get("/ui/pending").text)
        self.assertNotIn('id="allow-add"', self.get("/ui/allowlist").text)
        self.assertIn("read-only", text)
        self.patch(ui.pages, "canWrite", original)
        cookies, token = self.session()
        self.patch(ui.pages, "canWrite", lambda request: False)
        page = self.post("/ui/runs/%s/decide" % (self.runs["bad"],), {"decision": "rejected", "csrf": token}, cookies)
        self.assertEqual(page.code, 403)
        self.assertEqual(self.verdict(self.runs["bad"]), "deviations")

    def test_allowlistAddAndRemove(self) -> None:
        cookies, token = self.session()
        page = self.post("/ui/allowlist", {"kind": "sni", "value": "*.example.test", "package_name": "left-pad",
                                           "note": "vendor CDN " + XSS, "csrf": token}, cookies)
        self.assertEqual(page.code, 303, page.text[:300])
        entries = self.successResultOf(self.o.store.listAllow())
        entry = [e for e in entries if e["value"] == "*.example.test"][0]
        text = self.get("/ui/allowlist").text
        self.assertIn("package left-pad", text)
        self.assertIn("vendor CDN &lt;script&gt;", text)
        self.assertIn("/ui/allowlist/%s/remove" % (entry["id"],), text)
        page = self.post("/ui/allowlist", {"kind": "nonsense", "value": "x", "csrf": token}, cookies)
        self.assertEqual(page.code, 400)
        page = self.post("/ui/allowlist/%s/remove" % (entry["id"],), {"csrf": token}, cookies)
        self.assertEqual(page.code, 303)
        self.assertNotIn(entry["id"], self.get("/ui/allowlist").text)


class ProcessTreeTests(SynchronousTestCase):
    def event(self, id: int, etype: int, payload: dict) -> S.StoredEvent:
        import json

        return S.StoredEvent(id, "r", 1, id, etype, 0, 0, payload.get("Header", {}).get("PID", 0), json.dumps(payload))

    def test_lineageAndEvidence(self) -> None:
        E = wire.EventType
        events = [
            self.event(1, E.EXEC, {"Header": {"PID": 10, "PPID": 1}, "BinaryPathStr": "/bin/sh", "ArgvStrs": ["sh", "-c", "node i.js"], "CommStr": "sh"}),
            self.event(2, E.EXEC, {"Header": {"PID": 11, "PPID": 10}, "BinaryPathStr": "/usr/bin/node", "ArgvStrs": ["node", "i.js"], "CommStr": "node"}),
            self.event(3, E.EXEC, {"Header": {"PID": 12, "PPID": 11}, "BinaryPathStr": "/usr/bin/curl", "ArgvStrs": ["curl", "x"], "CommStr": "curl"}),
            self.event(4, E.FILE_ACCESS, {"Header": {"PID": 12, "Tags": 3}, "PathName": "/root/.ssh/id_rsa"}),
            self.event(5, E.FILE_ACCESS, {"Header": {"PID": 12, "Tags": 3}, "PathName": "/root/.ssh/id_rsa"}),
            self.event(6, E.NET_CONNECT, {"Header": {"PID": 12}, "DestIP": "::1", "DestPort": 443}),
            self.event(7, E.DNS_QUERY, {"Header": {"PID": 11}, "QName": "x.test"}),
            self.event(8, E.TLS_SNI, {"Header": {"PID": 99, "PPID": 98}, "SNI": "orphan.test"}),
            # A cycle must not hang or drop processes.
            self.event(9, E.EXEC, {"Header": {"PID": 20, "PPID": 21}, "BinaryPathStr": "/a"}),
            self.event(10, E.EXEC, {"Header": {"PID": 21, "PPID": 20}, "BinaryPathStr": "/b"}),
        ]
        tree = ui.processTree(events, [5])
        self.assertEqual([(p.pid, p.depth) for p in tree][:4], [(10, 0), (11, 1), (12, 2), (99, 0)])
        self.assertEqual({p.pid for p in tree}, {10, 11, 12, 99, 20, 21})
        curl = tree[2]
        self.assertEqual((curl.binary, curl.argv), ("/usr/bin/curl", ["curl", "x"]))
        self.assertEqual(curl.listed("file"), [("/root/.ssh/id_rsa", 2, True, 5, True)])
        self.assertEqual(curl.listed("net")[0][0], "[::1]:443")
        self.assertTrue(curl.evidence)
        self.assertTrue(tree[0].onEvidencePath and tree[1].onEvidencePath)
        self.assertFalse(tree[3].onEvidencePath)

    def test_formatting(self) -> None:
        self.assertEqual(ui.duration(1_500_000_000), "1.5 s")
        self.assertEqual(ui.duration(90 * 10**9), "1m 30s")
        self.assertEqual(ui.relTime(10**9, 3 * 3600 * 10**9), "2h ago")
        self.assertEqual(ui.truncate("abcdef", 4), "abc…")


class LoginPageTests(SynchronousTestCase):
    """
    The sign-in page, rendered from C{templates/login.html} by the
    dashboard's session module.
    """

    def setUp(self) -> None:
        from fangs.orchestrator.auth import Authenticator

        self.o = InMemoryOrchestrator(self)
        self.o.api.auth = Authenticator("token", self.o.store, peerIdentity=lambda r: None, clock=self.o.clock)

    def request(self, method: str, form: Optional[Dict[str, str]] = None) -> Page:
        from urllib.parse import urlencode

        treq = StubTreq(self.o.api.resource())
        headers = {b"Content-Type": [b"application/x-www-form-urlencoded"]} if form is not None else None
        d = treq.request(method, "http://orchestrator.test/ui/login", headers=headers,
                         data=urlencode(form).encode() if form is not None else None, allow_redirects=False)
        treq.flush()
        r = self.successResultOf(d)
        return Page(r.code, self.successResultOf(r.content()), r.headers)

    def test_page(self) -> None:
        page = self.request("GET")
        self.assertEqual(page.code, 200)
        self.assertIn("text/html", page.header("Content-Type"))
        self.assertEqual(page.header("Content-Security-Policy"), "default-src 'self'")
        self.assertEqual(page.header("X-Frame-Options"), "DENY")
        self.assertIn('<form method="post" action="/ui/login">', page.text)
        self.assertIn('name="token"', page.text)
        self.assertNotIn("login-error", page.text)

    def test_refusedTokenShownEscaped(self) -> None:
        page = self.request("POST", {"token": "<script>alert(1)</script>"})
        self.assertEqual(page.code, 401)
        self.assertIn('class="login-error"', page.text)
        self.assertNotIn("<script>", page.text)

    def test_goodTokenSetsSessionAndRedirects(self) -> None:
        from twisted.internet.defer import Deferred

        created = self.successResultOf(Deferred.fromCoroutine(self.o.core.createToken("alice", ["orchestrator:read"], "t")))
        page = self.request("POST", {"token": created["token"]})
        self.assertEqual(page.code, 302)
        self.assertEqual(page.header("Location"), "/ui/")
        self.assertIn("HttpOnly", page.header("Set-Cookie"))
