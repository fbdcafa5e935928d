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
from typing import Any, Callable, Dict, List, Optional, Tuple

from benchmarks.common import Orchestrator, cpuSeconds, post, realisticEvent


_CLUSTER: List[Any] = []  # the throwaway cluster, when this benchmark started one


def _serverCPU() -> Optional[float]:
    """
    CPU seconds of the throwaway PostgreSQL cluster's processes so far, or
    None for a server given by C{$FANGS_PG_DSN}.
    """
    if not _CLUSTER:
        return None
    with open(os.path.join(_CLUSTER[0].data, "postmaster.pid")) as f:
        postmaster = int(f.readline())
    try:
        with open("/proc/%d/task/%d/children" % (postmaster, postmaster)) as f:
            children = [int(p) for p in f.read().split()]
    except OSError:
        children = []
    return cpuSeconds(postmaster) + sum(cpuSeconds(p) for p in children)


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
    _CLUSTER[:] = [c]
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


def _dispatch(dsn: str, orchestrators: int, runners: int, scans: int) -> Tuple[float, Dict[str, Optional[float]]]:
    """
    Queue C{scans} jobs, then let C{runners} simulated runners (spread over
    the orchestrators) drain the queue: poll, post an ok result.  Returns
    scans dispatched per second and the CPU seconds per scan the
    orchestrators, the PostgreSQL server and this load generator spent
    while they did.
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
        before = (sum(cpuSeconds(o.proc.pid) for o in orchs), _serverCPU(), time.process_time())
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        seconds = time.perf_counter() - start
        after = (sum(cpuSeconds(o.proc.pid) for o in orchs), _serverCPU(), time.process_time())
        assert done[0] >= scans, done[0]
    finally:
        for o in orchs:
            o.stop()
    server = None if after[1] is None or before[1] is None else (after[1] - before[1]) / scans
    return scans / seconds, {"orchestrators": (after[0] - before[0]) / scans, "postgres": server,
                             "load": (after[2] - before[2]) / scans}


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
    # Enough runners to keep one orchestrator busy: a second one can only
    # add what the first could not do.
    scans, runners = 600, 32
    one, cpuOne = _dispatch(fresh(), 1, runners, scans)
    two, cpuTwo = _dispatch(fresh(), 2, runners, scans)
    report(
        "postgres",
        "scans dispatched/s, 2 orchestrators on one PostgreSQL (%d runners)" % (runners,),
        "%.0f/s" % two,
        "1 orchestrator %.0f/s" % one,
        "ratio %.2f (target >= 1.6)" % (two / one),
    )
    # What explains the ratio: CPU per scan of each party.  One
    # orchestrator uses at most one core (the GIL); the machine's cores
    # bound both runs, so with every core free two orchestrators reach at
    # most min(2, cores * orchestrator / total) times one.
    cores = len(os.sched_getaffinity(0))
    for label, cpu in (("1 orchestrator", cpuOne), ("2 orchestrators", cpuTwo)):
        total = sum(v for v in cpu.values() if v is not None) or 1e-9
        report(
            "postgres",
            "CPU ms/scan, orchestrators / PostgreSQL / load generator (%s)" % (label,),
            "%.1f / %s / %.1f" % (cpu["orchestrators"] * 1000, "?" if cpu["postgres"] is None else "%.1f" % (cpu["postgres"] * 1000), cpu["load"] * 1000),
            "%d cores: <= %.0f scans/s" % (cores, cores / total),
            "ceiling of the ratio %.2f" % (min(2.0, cores * cpu["orchestrators"] / total),),
        )
