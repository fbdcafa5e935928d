"""
C{make bench} figures for the PostgreSQL backend, each next to its reference
measured in the same run:

  - events/s ingested over one HTTP connection into PostgreSQL, next to SQLite;
  - scans dispatched per second (queued, long-polled, result posted) with two
    orchestrators sharing one PostgreSQL database, next to one orchestrator.

The database is C{$FANGS_PG_DSN} when set (it must be empty or a FANGS
database), else a throwaway cluster started like the tests' (L{tests.pg}).
"""

from __future__ import annotations

import os
import random
import threading
import time
import urllib.request
from typing import Any, Callable, List

from benchmarks.common import Orchestrator, post, realisticEvent


def _databases() -> Callable[[], str]:
    """
    A function giving a fresh database DSN per call.
    """
    base = os.environ.get("FANGS_PG_DSN")
    if base:
        import psycopg

        counter = iter(range(1, 10**6))

        def fromServer() -> str:
            name = "fangs_bench_%d_%d" % (os.getpid(), next(counter))
            with psycopg.connect(base, autocommit=True) as conn:
                conn.execute('CREATE DATABASE "%s"' % (name,))
            return base.rsplit("/", 1)[0] + "/" + name

        return fromServer
    from tests import pg  # the repository's tests: make bench runs from its root

    c = pg.cluster()
    return lambda: c.dsn(c.createDatabase("bench"))


def _ingest(extra: List[str], total: int, batchSize: int) -> float:
    import json

    rng = random.Random(7)
    events = [realisticEvent(rng, i) for i in range(total)]
    body = b"".join(
        json.dumps({"run_id": [0] * 16, "seq": n + 1, "events": events[i : i + batchSize]}, separators=(",", ":")).encode() + b"\n"
        for n, i in enumerate(range(0, total, batchSize))
    )
    orch = Orchestrator(extra + ["--watch-interval", "0", "--retention-days", "0"])
    try:
        post(orch.url + "/v1/runners/register", {"runner_id": "bench", "proto_version": 1})
        code, queued = post(orch.url + "/v1/scans", {"target_runner": "bench", "Job": {"kind": "sandbox_scan", "sandbox": {"image": "fangs-sandbox/node:20"}, "duration": 3600 * 10**9}})
        start = time.perf_counter()
        code, ack = post(orch.url + "/v1/runs/%s/events" % (queued["run_id"],), body, {"Content-Type": "application/x-ndjson"})
        seconds = time.perf_counter() - start
        assert code == 200 and ack["persisted"] == total, (code, ack)
    finally:
        orch.stop()
    return total / seconds


def _dispatch(dsn: str, orchestrators: int, runners: int, scans: int) -> float:
    """
    Queue C{scans} jobs, then let C{runners} simulated runners (spread over
    the orchestrators) drain the queue: poll, post an ok result.  Returns
    scans dispatched per second.
    """
    orchs = [Orchestrator(["--db", dsn, "--poll-wait", "2", "--watch-interval", "0", "--retention-days", "0"]) for _ in range(orchestrators)]
    try:
        for i in range(scans):
            code, _ = post(orchs[i % len(orchs)].url + "/v1/scans", {"Job": {"kind": "sandbox_scan", "sandbox": {"image": "fangs-sandbox/node:20"}}})
            assert code == 202, code
        done = [0]
        lock = threading.Lock()

        def runner(n: int) -> None:
            url = orchs[n % len(orchs)].url
            rid = "bench-%d" % (n,)
            post(url + "/v1/runners/register", {"runner_id": rid, "proto_version": 1})
            while True:
                with lock:
                    if done[0] >= scans:
                        return
                with urllib.request.urlopen(url + "/v1/runners/%s/jobs" % (rid,), timeout=30) as r:
                    body = r.read()
                    if r.status == 204:
                        continue
                from fangs import wire

                runID = wire.loads(body, wire.Job).run_id.hex()
                post(url + "/v1/runs/%s/result" % (runID,), {"status": "ok"})
                with lock:
                    done[0] += 1

        threads = [threading.Thread(target=runner, args=(n,), daemon=True) for n in range(runners)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        seconds = time.perf_counter() - start
        assert done[0] >= scans, done[0]
    finally:
        for o in orchs:
            o.stop()
    return scans / seconds


def main(report: Callable[..., Any]) -> None:
    total, batchSize = 50_000, 64
    fresh = _databases()
    sqliteRate = _ingest([], total, batchSize)
    pgRate = _ingest(["--db", fresh()], total, batchSize)
    report(
        "postgres",
        "ingest events/s over one HTTP connection (%dk, %d/batch)" % (total // 1000, batchSize),
        "%.0f/s" % pgRate,
        "SQLite %.0f/s" % sqliteRate,
        "ratio %.2f" % (pgRate / sqliteRate),
    )
    scans, runners = 600, 8
    one = _dispatch(fresh(), 1, runners, scans)
    two = _dispatch(fresh(), 2, runners, scans)
    report(
        "postgres",
        "scans dispatched/s, 2 orchestrators on one PostgreSQL (%d runners)" % (runners,),
        "%.0f/s" % two,
        "1 orchestrator %.0f/s" % one,
        "ratio %.2f" % (two / one),
    )
