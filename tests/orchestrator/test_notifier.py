"""
Notifications: targets through the API, templates, signatures, and the
delivery loop over the durable outbox (fake clock and an in-memory receiver
through StubTreq; one real loopback socket).
"""

import email.utils
import json

from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from fangs.errors import BadRequest
from fangs.orchestrator import notifier as N
from fangs.orchestrator.config import OrchestratorConfig
from tests.orchestrator.helpers import InMemoryOrchestrator, execEvent, runScan
from tests.orchestrator.test_api import assertError
from tests.orchestrator.test_review import BENIGN, MALICIOUS

SECRET = "s3cret-key"
ENV = {"FANGS_HOOK_SECRET": SECRET, "HOOK_TOKEN": "Bearer abc"}
#: The names the tests' config lets targets read, and the addresses it
#: allows: loopback (the real-socket receiver) and TEST-NET-2, which the
#: fake resolver answers for every name (no packet ever goes there: the
#: receiver is behind StubTreq).
CONFIG = OrchestratorConfig(
    notifierAllowPrivate=("127.0.0.0/8", "::1/128", "198.51.100.0/24"),
    notifierEnv=("FANGS_HOOK_SECRET", "HOOK_TOKEN", "SLACK_URL", "X", "MISSING_SECRET", "NOT_SET"),
)
POLICY = N.TargetPolicy.fromConfig(CONFIG.notifierAllowPrivate, CONFIG.notifierEnv)


def fakeResolver(answers=("198.51.100.7",)):
    def resolve(host):
        return succeed(list(answers))

    return resolve


class Receiver(Resource):
    """
    A webhook receiver that records every request and answers from a script
    of C{(code, headers)} (the last entry repeats).
    """

    isLeaf = True

    def __init__(self, script=((200, {}),)):
        super().__init__()
        self.script = list(script)
        self.requests = []

    def render_POST(self, request):
        body = request.content.read()
        self.requests.append((dict((k.decode().lower(), v[0].decode()) for k, v in request.requestHeaders.getAllRawHeaders()), body))
        code, headers = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        request.setResponseCode(code)
        for k, v in headers.items():
            request.setHeader(k, v)
        return b"ok" if code < 300 else b"nope"


class RefusingHTTP:
    def __init__(self):
        self.calls = 0

    def request(self, *a, **kw):
        self.calls += 1
        return fail(ConnectionRefusedError("no one home"))


class World:
    """
    An in-memory orchestrator, a receiver behind StubTreq and a notifier
    service on the same clock.
    """

    def __init__(self, test, script=((200, {}),), path=":memory:", http=None, environ=ENV, clock=None, **kw):
        self.test = test
        self.o = InMemoryOrchestrator(test, path=path, clock=clock, config=CONFIG)
        self.receiver = Receiver(script)
        self.stub = StubTreq(self.receiver)
        self.http = http or self.stub
        kw.setdefault("policy", POLICY)
        kw.setdefault("resolver", fakeResolver())
        self.svc = N.NotifierService(self.o.clock, self.o.store, self.http, environ=environ, rand=lambda: 0.5, **kw)
        self.o.analyzer.listeners.append(self.svc.wake)
        self.o.core.notifier = self.svc
        self.seeded = set()
        self.svc.startService()
        test.addCleanup(self.stop)

    def stop(self):
        if self.svc.running:
            self.test.successResultOf(self.svc.stopService())

    def flush(self):
        self.stub.flush()

    def advance(self, seconds):
        self.o.clock.advance(seconds)
        self.flush()

    def addTarget(self, name="hook", url="https://hooks.example/fangs", template="generic", **kw):
        body = dict(name=name, url=url, template=template, **kw)
        code, reply = self.o.call("POST", "/v1/notifiers", body)
        self.test.assertIn(code, (200, 201), reply)
        return reply

    def badScan(self, events=MALICIOUS, package="left-pad"):
        """
        A run with deviations (the package's baseline seeded first).
        """
        if "worker-1" not in self.o.registry:
            self.o.register()
        if package not in self.seeded:
            self.seeded.add(package)
            runScan(self.o, BENIGN, package=package)
        runID = runScan(self.o, events, package=package)
        self.flush()
        return runID

    def outbox(self, runID):
        return self.test.successResultOf(self.o.store.outboxFor(runID))

    def deliveries(self, name="hook"):
        code, reply = self.o.call("GET", "/v1/notifiers/%s/deliveries" % (name,))
        self.test.assertEqual(code, 200, reply)
        return list(reversed(reply["deliveries"]))


# ---------------------------------------------------------------------------


class TemplateTests(SynchronousTestCase):
    RUN = {"run_id": "ab" * 16, "package_name": "left-pad", "version": "1.3.0", "state": "done", "verdict": "deviations", "max_severity": "critical"}

    def devs(self, n=2):
        sev = ["critical", "high", "medium", "low"]
        return [
            {"id": "%032x" % i, "category": "fs_new_path_read", "value": "/root/.ssh/id_%d" % i, "severity": sev[i % 4],
             "reason": "why", "evidence_event_id": i, "detected_at": "2027-01-15T08:00:00Z"}
            for i in range(n)
        ]

    def test_slack(self):
        body, ctype = N.render("slack", self.RUN, self.devs(2))
        self.assertEqual(ctype, "application/json")
        msg = json.loads(body)
        self.assertEqual(msg["text"], "🚨 FANGS deviation: left-pad@1.3.0 — 2 findings (max: critical)")
        self.assertEqual([b["type"] for b in msg["blocks"]], ["header", "section", "section"])
        self.assertEqual(msg["blocks"][0]["text"], {"type": "plain_text", "text": msg["text"], "emoji": True})
        self.assertEqual(msg["blocks"][1]["text"]["text"], "Run `abababababab` · package `left-pad` · version `1.3.0`")
        self.assertEqual(
            msg["blocks"][2]["text"]["text"],
            "• *critical* `/root/.ssh/id_0` — fs_new_path_read\n• *high* `/root/.ssh/id_1` — fs_new_path_read",
        )
        one = json.loads(N.render("slack", self.RUN, self.devs(1))[0])
        self.assertIn("— 1 finding (max", one["text"])

    def test_slackLimitsOnCharacters(self):
        run = dict(self.RUN, package_name="é" * 200)
        devs = self.devs(15)
        devs[0]["value"] = "ü" * 100
        msg = json.loads(N.render("slack", run, devs)[0])
        header = msg["blocks"][0]["text"]["text"]
        self.assertEqual(len(header), 150)
        self.assertTrue(header.endswith("…"))
        lines = msg["blocks"][2]["text"]["text"].split("\n")
        self.assertEqual(len(lines), 13)
        self.assertEqual(lines[-1], "_… and 3 more_")
        self.assertIn("`" + "ü" * 79 + "…`", lines[0])

    def test_discord(self):
        msg = json.loads(N.render("discord", self.RUN, self.devs(14))[0])
        self.assertEqual(msg["username"], "FANGS")
        (embed,) = msg["embeds"]
        self.assertEqual(embed["title"], "FANGS deviation: left-pad@1.3.0")
        self.assertEqual(embed["description"], "**14 findings** (max severity: **critical**)\nRun `abababababab`")
        self.assertEqual(embed["color"], 0xE3635D)
        self.assertEqual(len(embed["fields"]), 13)
        self.assertEqual(embed["fields"][0], {"name": "critical · fs_new_path_read", "value": "`/root/.ssh/id_0`", "inline": False})
        self.assertEqual(embed["fields"][-1], {"name": "…", "value": "and 2 more", "inline": False})
        low = json.loads(N.render("discord", dict(self.RUN, max_severity="low"), self.devs(1))[0])
        self.assertEqual(low["embeds"][0]["color"], 0x6DA3D8)

    def test_generic(self):
        msg = json.loads(N.render("generic", self.RUN, self.devs(2))[0])
        self.assertEqual(
            list(msg),
            ["source", "schema_version", "run_id", "package_name", "version", "state", "verdict", "is_baseline",
             "max_severity", "deviations", "deviation_count"],
        )
        self.assertEqual(msg["deviation_count"], 2)
        self.assertEqual(msg["deviations"][1]["severity"], "high")

    def test_siemIsNDJSONPerDeviation(self):
        body, ctype = N.render("siem", self.RUN, self.devs(3))
        self.assertEqual(ctype, "application/x-ndjson")
        lines = [json.loads(line) for line in body.decode().splitlines()]
        self.assertEqual(len(lines), 3)
        self.assertTrue(body.endswith(b"\n"))
        for key in ("run_id", "package_name", "version", "severity", "category", "value", "reason", "detected_at"):
            self.assertIn(key, lines[0])
        self.assertEqual(lines[2]["value"], "/root/.ssh/id_2")


class SignatureTests(SynchronousTestCase):
    def test_verifyAndTamper(self):
        body = b'{"run_id":"x"}'
        sig = N.sign(b"k", 1_800_000_000, body)
        self.assertRegex(sig, r"^v1=[0-9a-f]{64}$")
        self.assertTrue(N.verify(b"k", "1800000000", sig, body, now=1_800_000_010))
        self.assertFalse(N.verify(b"k", "1800000000", sig, body + b" ", now=1_800_000_010))
        self.assertFalse(N.verify(b"other", "1800000000", sig, body, now=1_800_000_010))
        self.assertFalse(N.verify(b"k", "1800000001", sig, body, now=1_800_000_010))  # timestamp is signed
        self.assertFalse(N.verify(b"k", "1800000000", sig, body, now=1_800_000_000 + 301))  # replayed later

    def test_policy(self):
        self.assertEqual([N.classify(c) for c in (200, 204, 408, 429, 500, 503, 400, 401, 404, 301, None)],
                         ["sent", "sent", "failed", "failed", "failed", "failed", "permanent", "permanent", "permanent", "permanent", "failed"])
        self.assertEqual([N.backoff(n, lambda: 0.5) for n in (1, 2, 3, 4)], [1.0, 2.0, 4.0, 8.0])
        self.assertEqual(N.backoff(1, lambda: 0.0), 0.75)
        self.assertEqual(N.backoff(30, lambda: 0.99), N.BACKOFF_CAP)
        self.assertEqual(N.parseRetryAfter(b"120", 0), 120.0)
        now = 1_800_000_000
        self.assertEqual(N.parseRetryAfter(email.utils.formatdate(now + 90, usegmt=True).encode(), now), 90.0)
        self.assertIsNone(N.parseRetryAfter(b"soon", now))
        self.assertIsNone(N.parseRetryAfter(None, now))

    def test_urls(self):
        for ok in ("https://hooks.slack.com/services/x", "http://127.0.0.1:9000/h", "http://127.1.2.3/h",
                   "http://[::1]:8080/h", "http://localhost/h", "https://[2606:4700::1111]/h"):
            self.assertEqual(N.checkURL(ok, POLICY), ok)
        for bad in ("ftp://127.0.0.1/", "http://[::2]/h", "https://user:pw@x.example/",
                    "http://127.0.0.1:99999/", "https:///nohost", "https://x.example/a b", "javascript:alert(1)",
                    "https://[2001:db8::1]/h"):
            self.assertRaises(BadRequest, N.checkURL, bad, POLICY)
        # Without an allowlist every internal address is refused.
        for bad in ("http://example.com/h", "http://127.0.0.1:9000/h", "https://localhost/h", "https://10.1.2.3/h", "https://192.168.1.1/",
                    "https://169.254.169.254/latest/meta-data/", "https://[fd00:ec2::254]/", "https://[::ffff:127.0.0.1]/",
                    "https://100.64.0.1/", "https://[fe80::1]/", "https://0.0.0.0/", "https://172.16.0.1/"):
            self.assertRaises(BadRequest, N.checkURL, bad, N.TargetPolicy())


class TargetAPITests(SynchronousTestCase):
    def setUp(self):
        self.o = InMemoryOrchestrator(self, config=CONFIG)

    def test_crud(self):
        body = {"name": "siem-1", "url": "https://siem.example/in", "template": "siem", "secret_env": "FANGS_HOOK_SECRET",
                "min_severity": "high", "headers": {"Authorization": "${HOOK_TOKEN}"}, "packages": ["@acme/*", "left-pad"]}
        code, created = self.o.call("POST", "/v1/notifiers", body)
        self.assertEqual(code, 201, created)
        self.assertEqual(created["created"], True)
        self.assertEqual(created["secret_env"], "FANGS_HOOK_SECRET")
        self.assertNotIn(SECRET, json.dumps(created))
        code, updated = self.o.call("POST", "/v1/notifiers", dict(body, enabled=False))
        self.assertEqual((code, updated["created"], updated["enabled"]), (200, False, False))
        code, listed = self.o.call("GET", "/v1/notifiers")
        self.assertEqual([n["name"] for n in listed["notifiers"]], ["siem-1"])
        code, one = self.o.call("GET", "/v1/notifiers/siem-1")
        self.assertEqual((code, one["packages"], one["headers"]), (200, ["@acme/*", "left-pad"], {"Authorization": "${HOOK_TOKEN}"}))
        code, gone = self.o.call("DELETE", "/v1/notifiers/siem-1")
        self.assertEqual((code, gone), (200, {"name": "siem-1", "removed": True}))
        code, err = self.o.call("GET", "/v1/notifiers/siem-1")
        assertError(self, code, err, 404, "unknown_notifier")
        code, err = self.o.call("DELETE", "/v1/notifiers/siem-1")
        assertError(self, code, err, 404)
        code, err = self.o.call("POST", "/v1/notifiers/nope/test")
        assertError(self, code, err, 404)

    def test_invalid(self):
        base = {"name": "h", "url": "https://h.example/", "template": "generic"}
        cases = [
            ({"url": "http://[::2]/"}, "not a public address"),
            ({"url": "gopher://127.0.0.1/"}, "http"),
            ({"template": "teams"}, "template"),
            ({"min_severity": "warn"}, "min_severity"),
            ({"secret_env": "not a var"}, "secret_env"),
            ({"template": "slack", "secret_env": "X"}, "generic and siem"),
            ({"headers": {"Bad Name": "x"}}, "header name"),
            ({"headers": {"X-Ok": "a\r\nInjected: 1"}}, "control"),
            ({"headers": {"X-Fangs-Signature": "v1=0"}}, "set by the orchestrator"),
            ({"headers": ["x"]}, "headers"),
            ({"packages": "left-pad"}, "packages"),
            ({"enabled": "yes"}, "enabled"),
            ({"name": "../etc"}, "name"),
            ({"colour": "red"}, "unknown field"),
        ]
        for change, words in cases:
            code, err = self.o.call("POST", "/v1/notifiers", dict(base, **change))
            assertError(self, code, err, 400, "bad_request", words)
        code, ok = self.o.call("POST", "/v1/notifiers", dict(base, url="http://[::1]:8080/hook"))
        self.assertEqual(code, 201, ok)
        code, ok = self.o.call("POST", "/v1/notifiers", dict(base, name="slack", template="slack", url="${SLACK_URL}"))
        self.assertEqual(code, 201, ok)


class DeliveryTests(SynchronousTestCase):
    def test_signedDeliveryOncePerRunAndTarget(self):
        w = World(self)
        w.addTarget(secret_env="FANGS_HOOK_SECRET", headers={"Authorization": "${HOOK_TOKEN}", "X-Team": "sec"})
        runID = w.badScan()
        self.assertEqual(len(w.receiver.requests), 1)
        headers, body = w.receiver.requests[0]
        self.assertTrue(N.verify(SECRET.encode(), headers["x-fangs-timestamp"], headers["x-fangs-signature"], body, now=w.o.clock.seconds()))
        self.assertFalse(N.verify(SECRET.encode(), headers["x-fangs-timestamp"], headers["x-fangs-signature"], body.replace(b"critical", b"low"), now=w.o.clock.seconds()))
        self.assertEqual((headers["authorization"], headers["x-team"], headers["content-type"]), ("Bearer abc", "sec", "application/json"))
        self.assertEqual(headers["x-fangs-attempt"], "1")
        self.assertTrue(headers["x-fangs-delivery"].isdigit())
        msg = json.loads(body)
        self.assertEqual((msg["run_id"], msg["verdict"], msg["max_severity"]), (runID, "deviations", "critical"))
        # A re-analysis (same or changed) never sends the same run again.
        code, _ = w.o.call("POST", "/v1/runs/%s/reanalyze" % (runID,))
        self.assertEqual(code, 200)
        code, _ = w.o.call("POST", "/v1/allow", {"kind": "exec", "value": "/bin/sh", "package_name": "left-pad"})
        self.assertEqual(code, 201)
        code, run = w.o.call("POST", "/v1/runs/%s/reanalyze" % (runID,))
        self.assertEqual((code, run["verdict"], run["deviation_count"]), (200, "deviations", 5))
        code, _ = w.o.call("POST", "/v1/runs/%s/reject" % (runID,))
        self.assertEqual(code, 200)
        w.advance(60)
        self.assertEqual(len(w.receiver.requests), 1)
        self.assertEqual([(d["attempt"], d["status"], d["http_status"]) for d in w.deliveries()], [(1, "sent", 200)])
        self.assertEqual([o["state"] for o in w.outbox(runID)], ["sent"])

    def test_500Then200RetriesOnce(self):
        w = World(self, script=[(500, {}), (200, {})])
        w.addTarget()
        runID = w.badScan()
        self.assertEqual(len(w.receiver.requests), 1)
        self.assertEqual(w.outbox(runID)[0]["state"], "pending")
        w.advance(0.9)  # backoff 1 s (jitter fixed at the middle)
        self.assertEqual(len(w.receiver.requests), 1)
        w.advance(0.2)
        self.assertEqual(len(w.receiver.requests), 2)
        w.advance(600)
        self.assertEqual(len(w.receiver.requests), 2)
        self.assertEqual(
            [(d["attempt"], d["status"], d["http_status"], d["error"]) for d in w.deliveries()],
            [(1, "failed", 500, "HTTP 500"), (2, "sent", 200, "")],
        )
        self.assertEqual(w.outbox(runID)[0]["state"], "sent")
        self.assertEqual(w.receiver.requests[0][1], w.receiver.requests[1][1])  # the same message

    def test_400Stops(self):
        w = World(self, script=[(400, {})])
        w.addTarget()
        runID = w.badScan()
        w.advance(3600)
        self.assertEqual(len(w.receiver.requests), 1)
        self.assertEqual([(d["status"], d["http_status"]) for d in w.deliveries()], [("permanent", 400)])
        self.assertEqual(w.outbox(runID)[0]["state"], "permanent")

    def test_retryAfterHonoured(self):
        w = World(self, script=[(429, {"Retry-After": "30"}), (503, {"Retry-After": email.utils.formatdate(0, usegmt=True)}), (200, {})])
        w.addTarget()
        w.badScan()
        self.assertEqual(len(w.receiver.requests), 1)
        w.advance(29)
        self.assertEqual(len(w.receiver.requests), 1)  # backoff alone would have retried after 1 s
        w.advance(1)
        self.assertEqual(len(w.receiver.requests), 2)
        # A Retry-After date in the past does not shorten the backoff (2 s).
        w.advance(1.9)
        self.assertEqual(len(w.receiver.requests), 2)
        w.advance(0.2)
        self.assertEqual(len(w.receiver.requests), 3)
        self.assertEqual([d["status"] for d in w.deliveries()], ["failed", "failed", "sent"])

    def test_transportErrorsRetryThenDead(self):
        http = RefusingHTTP()
        w = World(self, http=http, maxAttempts=3)
        w.addTarget()
        runID = w.badScan()
        w.advance(1.0)
        w.advance(2.0)
        w.advance(3600)
        self.assertEqual(http.calls, 3)
        deliveries = w.deliveries()
        self.assertEqual([(d["attempt"], d["status"], d["http_status"]) for d in deliveries], [(1, "failed", None), (2, "failed", None), (3, "failed", None)])
        self.assertIn("no one home", deliveries[0]["error"])
        self.assertIn("giving up after 3 attempts", deliveries[-1]["error"])
        self.assertEqual(w.outbox(runID)[0]["state"], "dead")

    def test_missingSecretIsPermanent(self):
        w = World(self, environ={})
        w.addTarget(secret_env="FANGS_HOOK_SECRET")
        runID = w.badScan()
        w.advance(600)
        self.assertEqual(w.receiver.requests, [])
        (d,) = w.deliveries()
        self.assertEqual(d["status"], "permanent")
        self.assertIn("FANGS_HOOK_SECRET is not set", d["error"])
        self.assertEqual(w.outbox(runID)[0]["state"], "permanent")

    def test_minSeverityAndPackageFilters(self):
        w = World(self)
        w.addTarget("crit", min_severity="critical")
        w.addTarget("medium", min_severity="medium")
        w.addTarget("acme", packages=["@acme/*"])
        w.addTarget("all")
        mediumOnly = w.badScan(BENIGN + [execEvent("/bin/sh", pid=300)])
        self.assertEqual([o["notifier_name"] for o in w.outbox(mediumOnly)], ["all", "medium"])
        critical = w.badScan()
        self.assertEqual([o["notifier_name"] for o in w.outbox(critical)], ["all", "crit", "medium"])
        scoped = w.badScan(package="@acme/tool")
        self.assertEqual([o["notifier_name"] for o in w.outbox(scoped)], ["acme", "all", "crit", "medium"])
        clean = runScan(w.o, BENIGN)
        self.assertEqual(w.outbox(clean), [])
        self.assertEqual(len(w.receiver.requests), 9)

    def test_slackAndDiscordDelivered(self):
        w = World(self)
        w.addTarget("s", template="slack", url="${SLACK_URL}")
        w.addTarget("d", template="discord", url="https://discord.example/api/webhooks/1/x")
        w.svc._environ = dict(ENV, SLACK_URL="https://hooks.slack.example/services/T/B/x")
        w.badScan()
        bodies = {}
        for headers, body in w.receiver.requests:
            self.assertNotIn("x-fangs-signature", headers)
            bodies[tuple(sorted(json.loads(body)))] = json.loads(body)
        self.assertEqual(set(bodies), {("blocks", "text", "unfurl_links", "unfurl_media"), ("allowed_mentions", "embeds", "username")})

    def test_disabledPausesAndRemovedKeepsHistory(self):
        w = World(self, script=[(500, {}), (200, {})])
        w.addTarget()
        runID = w.badScan()
        code, _ = w.o.call("POST", "/v1/notifiers", {"name": "hook", "url": "https://hooks.example/fangs", "enabled": False})
        w.advance(60)
        self.assertEqual(len(w.receiver.requests), 1)
        code, _ = w.o.call("DELETE", "/v1/notifiers/hook")
        self.assertEqual(code, 200)
        self.assertEqual(w.outbox(runID)[0]["state"], "dead")
        self.assertEqual([d["status"] for d in w.deliveries()], ["failed"])  # history outlives the target
        w.addTarget()  # the same name again does not re-announce old runs
        w.advance(60)
        self.assertEqual(len(w.receiver.requests), 1)

    def test_testMessage(self):
        w = World(self, script=[(404, {}), (200, {})])
        w.addTarget(secret_env="FANGS_HOOK_SECRET")
        code, err = w.o.call("POST", "/v1/notifiers/hook/test")
        assertError(self, code, err, 502, "notifier_failed", "HTTP 404")
        w.receiver.requests.clear()
        code, reply = w.o.call("POST", "/v1/notifiers/hook/test")
        self.assertEqual(code, 200, reply)
        self.assertEqual((reply["ok"], reply["http_status"], reply["signed"]), (True, 200, True))
        headers, body = w.receiver.requests[0]
        self.assertEqual(json.loads(body)["test"], True)
        self.assertTrue(N.verify(SECRET.encode(), headers["x-fangs-timestamp"], headers["x-fangs-signature"], body, now=w.o.clock.seconds()))

    def test_restartDeliversPendingOnce(self):
        path = self.mktemp()
        first = World(self, script=[(503, {})], path=path)
        first.addTarget()
        runID = first.badScan()
        self.assertEqual(len(first.receiver.requests), 1)
        self.assertEqual(first.outbox(runID)[0]["state"], "pending")
        first.stop()
        first.o.store.stop()

        second = World(self, script=[(200, {})], path=path)  # starts the clock where the first one did
        second.advance(1.0)  # due after the 1 s backoff; the service picks it up by itself
        second.advance(600)
        self.assertEqual(len(second.receiver.requests), 1)
        self.assertEqual(second.receiver.requests[0][1], first.receiver.requests[0][1])
        self.assertEqual(
            [(d["attempt"], d["status"]) for d in second.deliveries()], [(1, "failed"), (2, "sent")]
        )
        self.assertEqual(second.outbox(runID)[0]["state"], "sent")


class RealSocketTests(TestCase):
    """
    A real webhook receiver on loopback, the real treq client with its own
    pool, the signature checked by the receiver as docs/webhooks.md says.
    """

    timeout = 30

    def test_signedOverLoopback(self):
        return Deferred.fromCoroutine(self._signed())

    async def _signed(self):
        verified = []
        got = Deferred()

        class Verifying(Resource):
            isLeaf = True

            def render_POST(self, request):
                body = request.content.read()
                ts = request.getHeader(b"x-fangs-timestamp").decode()
                sig = request.getHeader(b"x-fangs-signature").decode()
                ok = N.verify(SECRET.encode(), ts, sig, body, now=reactor.seconds())
                tampered = N.verify(SECRET.encode(), ts, sig, body + b"x", now=reactor.seconds())
                verified.append((ok, tampered, json.loads(body)))
                if not got.called:
                    reactor.callLater(0, got.callback, None)
                request.setResponseCode(200 if ok else 401)
                return b"thanks"

        port = reactor.listenTCP(0, Site(Verifying()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        http = HTTPClient(Agent(reactor, pool=pool))

        # The orchestrator's clock reads the real time, so rows are due now.
        clock = Clock()
        clock.advance(reactor.seconds() - 1_800_000_000)
        o = InMemoryOrchestrator(self, clock=clock, config=CONFIG)
        svc = N.NotifierService(reactor, o.store, http, environ=ENV, policy=POLICY)
        o.analyzer.listeners.append(svc.wake)
        svc.startService()
        self.addCleanup(svc.stopService)
        url = "http://127.0.0.1:%d/hook" % (port.getHost().port,)
        code, _ = o.call("POST", "/v1/notifiers", {"name": "hook", "url": url, "template": "generic", "secret_env": "FANGS_HOOK_SECRET"})
        self.assertEqual(code, 201)
        o.register()
        runScan(o, BENIGN)
        runID = runScan(o, MALICIOUS)
        await got
        while not (await o.store.outboxFor(runID))[0]["state"] == "sent":
            await _sleep(0.01)
        ok, tampered, msg = verified[0]
        self.assertEqual((ok, tampered, msg["run_id"]), (True, False, runID))
        self.assertEqual(len(verified), 1)
        result = await svc.sendTest(await o.store.getNotifier("hook"))
        self.assertEqual((result["ok"], result["http_status"]), (True, 200))
        self.assertEqual(verified[-1][2]["test"], True)


def _sleep(seconds):
    d = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d
