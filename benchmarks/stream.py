"""
Run stream benchmark: 1,000 subscribers on one orchestrator.

    python -m benchmarks.stream            # prints the rows
    main(report) from benchmarks.__main__

A child process holds the clients (one reactor, 1,000 connections) and
records when each learns that a run completed; this process queues runs,
plays their runner and notes when each result was accepted.  Figures: the
orchestrator's RSS with 1,000 stream subscribers, and the p99 delay from a
result to C{run.completed} at every subscriber; the reference, measured in
the same run, is 1,000 clients polling C{GET /v1/runs} once a second (what
C{fangs scan submit --wait} and dashboards did before the stream).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List

CLIENTS = 1000
RUNS = 30
POLL_EVERY = 1.0


def _clients(url: str, n: int, mode: str, out: str) -> None:
    """
    Child: C{n} stream subscribers (C{mode="stream"}) or pollers
    (C{mode="poll"}); prints C{ready}, then on C{done} from stdin writes to
    C{out} a JSON object run id -> list of the times (epoch seconds) each
    client saw it done, and prints C{written}.
    """
    import resource

    from twisted.internet import reactor, stdio
    from twisted.internet.protocol import Protocol
    from twisted.internet.task import LoopingCall
    from twisted.protocols.basic import LineReceiver
    from twisted.web.client import Agent, HTTPConnectionPool, readBody

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    seen: Dict[str, List[float]] = {}
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = n
    agent = Agent(reactor, pool=pool)
    opened = [0]

    class Lines(Protocol):
        def __init__(self) -> None:
            self.buf = b""

        def dataReceived(self, data: bytes) -> None:
            self.buf += data
            while b"\n" in self.buf:
                raw, self.buf = self.buf.split(b"\n", 1)
                line = json.loads(raw)
                if line["type"] == "stream.open":
                    opened[0] += 1
                    if opened[0] == n:
                        sys.stdout.write("ready\n")
                        sys.stdout.flush()
                elif line["type"] == "run.completed":
                    seen.setdefault(line["run_id"], []).append(time.time())

    def subscribe() -> None:
        d = agent.request(b"GET", (url + "/v1/runs/stream?state=run.completed").encode())
        d.addCallback(lambda r: r.deliverBody(Lines()))

    class Poller:
        def __init__(self) -> None:
            self.known: set = set()
            self.first = True

        def poll(self) -> Any:
            d = agent.request(b"GET", (url + "/v1/runs?state=done&page_size=10").encode())
            d.addCallback(readBody)
            d.addCallback(self.got)
            d.addErrback(lambda f: None)
            return d

        def got(self, body: bytes) -> None:
            now = time.time()
            for run in json.loads(body)["runs"]:
                if run["verdict"] and run["run_id"] not in self.known:
                    self.known.add(run["run_id"])
                    if not self.first:
                        seen.setdefault(run["run_id"], []).append(now)
            if self.first:
                self.first = False
                opened[0] += 1
                if opened[0] == n:
                    sys.stdout.write("ready\n")
                    sys.stdout.flush()

    if mode == "stream":
        for i in range(n):
            reactor.callLater(i * 0.002, subscribe)
    else:
        for i in range(n):
            loop = LoopingCall(Poller().poll)
            reactor.callLater(i * POLL_EVERY / n, loop.start, POLL_EVERY)

    class Control(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            if line.strip() == b"done":
                with open(out, "w") as f:
                    json.dump(seen, f)
                self.sendLine(b"written")
                reactor.callLater(0.5, reactor.stop)

    stdio.StandardIO(Control())
    reactor.run()


def _percentile(values: List[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100.0 * (len(values) - 1))))]


def _measure(mode: str, report: Callable[..., None]) -> Dict[str, float]:
    from fangs import wire
    from benchmarks.common import REPO, Orchestrator, post
    from fangs.scanrequest import scanRequest

    orch = Orchestrator(["--watch-interval", "0"])
    out = os.path.join(orch.dir, "seen-%s.json" % (mode,))
    child = subprocess.Popen([sys.executable, "-m", "benchmarks.stream", "clients", orch.url,
                              str(CLIENTS), mode, out], env=dict(os.environ, PYTHONPATH=REPO), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdin is not None
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("the %s clients did not start" % (mode,))
        post(orch.url + "/v1/runners/register", {"runner_id": "bench", "proto_version": 1})
        resultAt: Dict[str, float] = {}
        import urllib.request

        for i in range(RUNS):
            request = json.loads(wire.dumps(scanRequest("bench-pkg", "1.0.%d" % (i,), 10 * wire.SECOND, "bench")))
            code, queued = post(orch.url + "/v1/scans", request)
            runID = queued["run_id"]
            urllib.request.urlopen(orch.url + "/v1/runners/bench/jobs", timeout=30).read()
            resultAt[runID] = time.time()
            post(orch.url + "/v1/runs/%s/result" % (runID,), {"status": "ok", "events_emitted": 0})
            time.sleep(0.2)
        time.sleep(POLL_EVERY * 2 + 1)
        rss = orch.rssBytes()
        child.stdin.write("done\n")
        child.stdin.flush()
        if child.stdout.readline().strip() != "written":
            raise RuntimeError("the %s clients did not report" % (mode,))
        with open(out) as f:
            seen = json.load(f)
    finally:
        child.kill()
        orch.stop()
    delays = [t - resultAt[r] for r, times in seen.items() if r in resultAt for t in times]
    expected = RUNS * CLIENTS
    return {"rss": rss, "p99": _percentile(delays, 99) if delays else float("inf"),
            "p50": _percentile(delays, 50) if delays else float("inf"), "delivered": len(delays) / expected}


def main(report: Callable[..., None]) -> None:
    stream = _measure("stream", report)
    polling = _measure("poll", report)
    mb = 1024 * 1024
    report("stream", "orchestrator RSS, %d stream subscribers (target < 200 MB)" % (CLIENTS,),
           "%.0f MB" % (stream["rss"] / mb,), "%d pollers %.0f MB" % (CLIENTS, polling["rss"] / mb),
           "%.2f" % (stream["rss"] / polling["rss"],))
    report("stream", "result -> run.completed p99, %d subscribers (target < 100 ms)" % (CLIENTS,),
           "%.0f ms" % (stream["p99"] * 1000,), "polling 1/s p99 %.0f ms" % (polling["p99"] * 1000,),
           "%.2f" % (stream["p99"] / polling["p99"],))
    report("stream", "lines delivered / expected (p50 %.0f ms)" % (stream["p50"] * 1000,),
           "%.3f" % (stream["delivered"],), "polling %.3f" % (polling["delivered"],), "")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "clients":
        _clients(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
    else:
        def _print(*row: Any) -> None:
            print("%-10s %-62s %16s   ref %-30s %s" % row)

        main(_print)
