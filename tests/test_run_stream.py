"""
The run stream end to end: a real C{twistd fangs-orchestrator}, this test
playing the runner over HTTP, and stream clients over NDJSON (treq), over a
WebSocket (autobahn) and through the real C{fangs} CLI (two orchestrators
on one PostgreSQL: L{tests.integration.test_run_stream}).
"""

import json
import os
import sys
from typing import Any, List

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from fangs import wire
from fangs.orchestrator.watcher import scanRequest
from tests.orchestrator.helpers import batchLine
from tests.orchestrator.test_review import BENIGN
from tests.procs import REPO, OrchestratorProcess, httpClient, jsonCall, sleep

BIN = os.path.join(os.path.dirname(sys.executable), "fangs")
FINAL = ("run.completed", "run.failed", "run.cancelled")


class NDJSONClient(Protocol):
    """
    Reads a stream response line by line as it arrives; L{close} hangs up.
    """

    def __init__(self) -> None:
        self.lines: List[dict] = []
        self._buf = b""

    def close(self) -> None:
        self.transport.stopProducing()

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True

    def dataReceived(self, data: bytes) -> None:
        self._buf += data
        while b"\n" in self._buf:
            raw, self._buf = self._buf.split(b"\n", 1)
            if raw.strip():
                self.lines.append(json.loads(raw))

    def runLines(self) -> List[dict]:
        return [x for x in self.lines if x["type"].startswith("run.")]


class _WS(WebSocketClientProtocol):
    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.lines.append(json.loads(payload))

    def onClose(self, wasClean, code, reason):
        self.factory.closed = True


class StreamClients:
    """
    Stream clients and a runner played over HTTP, against C{self.orch}.
    """

    async def openNDJSON(self, query: str = "") -> NDJSONClient:
        client = NDJSONClient()
        r = await self.http.get(self.orch.url + "/v1/runs/stream" + query, unbuffered=True)
        self.assertEqual(r.code, 200)
        self.assertEqual(r.headers.getRawHeaders(b"content-type"), [b"application/x-ndjson"])
        r.deliverBody(client)
        self.addCleanup(lambda: None if getattr(client, "lost", False) else client.close())
        return client

    async def openWebSocket(self, query: str = "") -> WebSocketClientFactory:
        factory = WebSocketClientFactory(self.orch.url.replace("http", "ws") + "/v1/runs/stream" + query)
        factory.protocol = _WS
        factory.lines = []
        factory.closed = False
        proto = await TCP4ClientEndpoint(reactor, "127.0.0.1", self.orch.port).connect(factory)
        self.addCleanup(lambda: proto.transport.loseConnection())
        return factory

    async def until(self, check, what: str, timeout: float = 20.0) -> None:
        waited = 0.0
        while not check():
            if waited > timeout:
                self.fail("timed out waiting for " + what)
            await sleep(0.05)
            waited += 0.05

    async def scanOnce(self, version: str, runner: str = "stream-runner") -> str:
        """
        Queue a scan and be its runner: take the job, send events, report.
        """
        code, _ = await jsonCall(self.http, "POST", self.orch.url + "/v1/runners/register",
                                 {"runner_id": runner, "proto_version": 1})
        self.assertEqual(code, 200)
        request = json.loads(wire.dumps(scanRequest("left-pad", version, 10 * wire.SECOND, runner)))
        code, queued = await jsonCall(self.http, "POST", self.orch.url + "/v1/scans", request)
        self.assertEqual(code, 202, queued)
        runID = queued["run_id"]
        code, job = await jsonCall(self.http, "GET", self.orch.url + "/v1/runners/%s/jobs" % (runner,))
        self.assertEqual(code, 200, job)
        for seq in (1, 2):
            code, ack = await jsonCall(self.http, "POST", self.orch.url + "/v1/runs/%s/events" % (runID,),
                                       raw=batchLine(seq, BENIGN))
            self.assertEqual(code, 200, ack)
            await sleep(0.6)  # run.updated lines are kept to a few a second
        code, ack = await jsonCall(self.http, "POST", self.orch.url + "/v1/runs/%s/result" % (runID,),
                                   {"status": "ok", "events_emitted": 2 * len(BENIGN)})
        self.assertEqual(code, 200, ack)
        return runID


class StreamTests(StreamClients, TestCase):
    timeout = 120

    def setUp(self):
        self.http = httpClient(self)
        self.orch = OrchestratorProcess(self, extra=["--watch-interval", "0"])
        return Deferred.fromCoroutine(self.orch.startAndWait(self.http))

    def test_ndjsonAndWebSocketCarryTheSameLines(self):
        return Deferred.fromCoroutine(self._sameLines())

    async def _sameLines(self):
        nd = await self.openNDJSON()
        ws = await self.openWebSocket()
        await self.until(lambda: nd.lines and ws.lines, "both streams open")
        self.assertEqual(nd.lines[0]["type"], "stream.open")
        self.assertEqual(ws.lines[0]["type"], "stream.open")
        runID = await self.scanOnce("1.3.0")
        await self.until(lambda: any(x["type"] in FINAL for x in nd.lines) and any(x["type"] in FINAL for x in ws.lines),
                         "run.completed on both")
        await sleep(0.3)
        types = [x["type"] for x in nd.runLines()]
        self.assertEqual(types[0], "run.queued")
        self.assertEqual(types[1], "run.started")
        self.assertIn("run.updated", types)
        self.assertEqual(types[-1], "run.completed")
        self.assertEqual(nd.runLines(), [x for x in ws.lines if x["type"].startswith("run.")])
        done = nd.runLines()[-1]
        self.assertEqual((done["run_id"], done["package"], done["version"], done["verdict"]),
                         (runID, "left-pad", "1.3.0", "baseline"))
        self.assertEqual(done["trace_id"], runID)
        cursors = [int(x["cursor"]) for x in nd.runLines()]
        self.assertEqual(cursors, sorted(cursors))
        self.assertEqual(len(set(cursors)), len(cursors))
        updated = [x for x in nd.runLines() if x["type"] == "run.updated"]
        self.assertEqual(updated[-1]["events_received"], 2 * len(BENIGN))

        # Reconnect after the first line: everything after it, each once.
        again = await self.openNDJSON("?since=%s" % (nd.runLines()[0]["cursor"],))
        await self.until(lambda: any(x["type"] in FINAL for x in again.lines), "the replayed run.completed")
        self.assertEqual(again.runLines(), nd.runLines()[1:])
        # Filters: another package's stream sees none of it.
        other = await self.openNDJSON("?package=is-number&since=0")
        await sleep(0.5)
        self.assertEqual(other.runLines(), [])

    def test_badQueries(self):
        return Deferred.fromCoroutine(self._badQueries())

    async def _badQueries(self):
        for query, words in (("?since=abc", "since must be a cursor"), ("?since=999999", "ahead of the stream"),
                             ("?state=nonsense", "state must be"), ("?run_id=xyz", "run_id must be")):
            code, body = await jsonCall(self.http, "GET", self.orch.url + "/v1/runs/stream" + query)
            self.assertEqual(code, 400, (query, body))
            self.assertIn(words, body["error"]["message"])

    def test_cli(self):
        return Deferred.fromCoroutine(self._cli())

    async def _cli(self):
        """
        C{fangs run watch} prints the lines of a run as they happen;
        C{fangs scan submit --wait} ends on the stream's verdict.
        """
        env = dict(os.environ, PYTHONPATH=REPO, FANGS_ORCHESTRATOR=self.orch.url)
        exe, pre = (BIN, []) if os.path.exists(BIN) else (sys.executable, ["-m", "fangs.cli"])
        watch = getProcessOutputAndValue(exe, pre + ["run", "watch", "--package", "left-pad", "--count", "5"],
                                         env=env, path=REPO)
        await sleep(1.5)
        await self.scanOnce("1.2.0")
        out, err, code = await watch
        self.assertEqual(code, 0, err)
        lines = out.decode().splitlines()
        self.assertEqual(len(lines), 5, out)
        self.assertIn("run.queued", lines[0])
        self.assertIn("left-pad@1.2.0", lines[0])
        self.assertTrue(any("run.completed" in x and "verdict baseline" in x for x in lines), lines)

        # --wait: the verdict arrives on the stream while the CLI waits.
        code, _ = await jsonCall(self.http, "POST", self.orch.url + "/v1/runners/register",
                                 {"runner_id": "cli-wait", "proto_version": 1})
        submit = getProcessOutputAndValue(exe, pre + ["scan", "submit", "left-pad@1.3.0", "--runner", "cli-wait",
                                                      "--skip-registry-validate", "--wait"], env=env, path=REPO)
        await sleep(1.0)
        code, job = await jsonCall(self.http, "GET", self.orch.url + "/v1/runners/cli-wait/jobs")
        self.assertEqual(code, 200, job)
        runID = bytes(job["run_id"]).hex()
        await jsonCall(self.http, "POST", self.orch.url + "/v1/runs/%s/events" % (runID,), raw=batchLine(1, BENIGN))
        await jsonCall(self.http, "POST", self.orch.url + "/v1/runs/%s/result" % (runID,),
                       {"status": "ok", "events_emitted": len(BENIGN)})
        out, err, code = await submit
        self.assertEqual(code, 0, (out, err))
        self.assertIn("clean", out.decode())
