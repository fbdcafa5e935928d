"""
An orchestrator assembled in memory for tests: the parts the daemon has,
wired by the same function (L{composeOrchestrator}: core, API, dispatcher,
analyzer, metrics, run stream) around a SQLite store (on C{:memory:}, run
synchronously), a L{Clock}, and a L{StubTreq} that drives the real Klein
resource.
"""

from __future__ import annotations

import json
from typing import Any, Optional, Tuple

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fangs import wire
from fangs.orchestrator.compose import composeOrchestrator
from fangs.orchestrator.config import OrchestratorConfig
from fangs.orchestrator.store import SQLiteStore, synchronousRunner

BASE = "http://orchestrator.test"


class InMemoryOrchestrator:
    def __init__(self, testCase: SynchronousTestCase, path: str = ":memory:", config: Optional[OrchestratorConfig] = None, clock: Optional[Clock] = None) -> None:
        self.clock = clock or Clock()
        self.clock.advance(1_800_000_000)  # a realistic epoch
        self.store = SQLiteStore(path, runInThread=synchronousRunner)
        testCase.successResultOf(Deferred.fromCoroutine(self.store.start()))
        testCase.addCleanup(self.store.stop)
        self.parts = composeOrchestrator(self.clock, self.store, config or OrchestratorConfig())
        self.registry = self.parts.registry
        self.dispatcher = self.parts.dispatcher
        self.analyzer = self.parts.analyzer
        self.core = self.parts.core
        self.api = self.parts.api
        self.treq = StubTreq(self.api.resource())
        self.test = testCase

    # -- request helpers -------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, headers: Any = None, raw: Optional[bytes] = None) -> Any:
        data = raw
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = contentHeaders(path, data, headers)
        d = self.treq.request(method, BASE + path, data=data, headers=headers)
        self.treq.flush()
        return self.test.successResultOf(d)

    def call(self, method: str, path: str, body: Any = None, headers: Any = None, raw: Optional[bytes] = None) -> Tuple[int, Any]:
        """
        Make a request that completes at once; return (status, decoded JSON or
        bytes).
        """
        response = self.request(method, path, body, headers, raw)
        content = self.test.successResultOf(response.content())
        ctype = response.headers.getRawHeaders(b"content-type", [b""])[0]
        if ctype == b"application/json" and content:
            return response.code, json.loads(content)
        return response.code, content

    def start(self, method: str, path: str, body: Any = None) -> Any:
        """
        Start a request that may stay pending (a long poll).
        """
        data = None if body is None else json.dumps(body).encode()
        return self.treq.request(method, BASE + path, data=data, headers=contentHeaders(path, data, None))

    def finish(self, d: Any) -> Tuple[int, Any]:
        self.treq.flush()
        response = self.test.successResultOf(d)
        content = self.test.successResultOf(response.content())
        if content and response.headers.getRawHeaders(b"content-type", [b""])[0] == b"application/json":
            return response.code, json.loads(content)
        return response.code, content

    # -- domain helpers --------------------------------------------------------

    def register(self, runnerID: str = "worker-1") -> None:
        status, _ = self.call("POST", "/v1/runners/register", {"runner_id": runnerID, "proto_version": 1})
        self.test.assertEqual(status, 200)

    def submit(self, runnerID: Optional[str] = "worker-1", **job: Any) -> str:
        body = {"Job": {"kind": "sandbox_scan", "package_name": "left-pad", "version": "1.3.0", "sandbox": {"image": "fangs-sandbox/node:20"}}}
        body["Job"].update(job)
        if runnerID is not None:
            body["target_runner"] = runnerID
        status, reply = self.call("POST", "/v1/scans", body)
        self.test.assertEqual(status, 202, reply)
        return reply["run_id"]

    def poll(self, runnerID: str = "worker-1") -> Tuple[int, Any]:
        d = self.start("GET", "/v1/runners/%s/jobs" % (runnerID,))
        self.treq.flush()
        if self.dispatcher.waiterCount():
            self.clock.advance(self.dispatcher.pollWait)
        return self.finish(d)


def contentHeaders(path: str, data: Optional[bytes], headers: Any) -> Any:
    """
    The Content-Type a real client sends (JSON, or NDJSON for event
    streams), unless the test gives its own headers.
    """
    if data is None or headers is not None and any(k.lower() == "content-type" for k in headers):
        return headers
    out = dict(headers or {})
    out["Content-Type"] = "application/x-ndjson" if path.split("?")[0].endswith("/events") else "application/json"
    return out


def batchLine(seq: int, events: Any, runID: Optional[str] = None) -> bytes:
    body: dict = {"seq": seq, "events": events}
    if runID is not None:
        body["run_id"] = list(bytes.fromhex(runID))
    return json.dumps(body).encode() + b"\n"


def fileEvent(path: str, flags: int = 0, tags: int = 0, pid: int = 100) -> dict:
    return {
        "type": wire.EventType.FILE_ACCESS,
        "payload": {
            "Header": {"TsNs": 1000 + pid, "PID": pid, "PPID": 1, "Type": 1, "Tags": tags},
            "PathName": path,
            "Flags": flags,
            "CommStr": "node",
        },
    }


def execEvent(binary: str, pid: int = 101) -> dict:
    return {"type": wire.EventType.EXEC, "payload": {"Header": {"TsNs": 5, "PID": pid, "PPID": 100, "Type": 2}, "BinaryPathStr": binary, "ArgvStrs": [binary], "CommStr": "sh"}}


def connectEvent(ip: str, port: int, pid: int = 102) -> dict:
    return {"type": wire.EventType.NET_CONNECT, "payload": {"Header": {"TsNs": 6, "PID": pid, "Type": 3}, "Family": 10 if ":" in ip else 2, "DestIP": ip, "DestPort": port, "CommStr": "node"}}


def dnsEvent(name: str, pid: int = 102) -> dict:
    return {"type": wire.EventType.DNS_QUERY, "payload": {"Header": {"TsNs": 7, "PID": pid, "Type": 4}, "QName": name, "QType": 1, "DestIP": "127.0.0.1", "DestPort": 53, "CommStr": "node"}}


def sniEvent(name: str, pid: int = 102) -> dict:
    return {"type": wire.EventType.TLS_SNI, "payload": {"Header": {"TsNs": 8, "PID": pid, "Type": 5}, "SNI": name, "Source": 3, "CommStr": "node"}}


def runScan(o: "InMemoryOrchestrator", events: list, status: str = "ok", dropped: int = 0, package: str = "left-pad", version: str = "1.3.0") -> str:
    """
    A whole scan through the API: submit, dispatch, events, result.
    """
    runID = o.submit(package_name=package, version=version)
    code, job = o.poll()
    assert code == 200, (code, job)
    if events:
        code, ack = o.call("POST", "/v1/runs/%s/events" % (runID,), raw=batchLine(1, events))
        assert code == 200, ack
    code, ack = o.call("POST", "/v1/runs/%s/result" % (runID,), {"status": status, "events_emitted": len(events), "events_dropped": dropped})
    assert code == 200, ack
    return runID


class SQLiteStoreFile:
    """
    A test case mixin: C{open(migrations=None)} a store on one SQLite file
    (at an older schema with a prefix of the migrations), C{close} it.
    """

    def setUp(self) -> None:
        import os
        import tempfile

        self.path = os.path.join(tempfile.mkdtemp(prefix="fangs-store-"), "fangs.db")

    async def open(self, migrations: Any = None) -> Any:
        from twisted.internet import reactor

        st = SQLiteStore(self.path, reactor)
        if migrations is not None:
            st.migrations = migrations
        await st.start()
        self.addCleanup(st.stop)  # type: ignore[attr-defined]
        return st

    async def close(self, st: Any) -> None:
        st.stop()
