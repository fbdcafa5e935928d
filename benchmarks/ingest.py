"""
Ingest: events per second over one HTTP connection into SQLite, next to raw
C{executemany} of the same rows into the same schema (C{python -m benchmarks ingest}).
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import tempfile
import time
from typing import List, Tuple

from benchmarks.common import SERIES, Orchestrator, cpuSeconds, post, realisticEvent, report


def benchIngest(total: int = 100_000, batchSize: int = 64) -> None:
    rng = random.Random(7)
    events = [realisticEvent(rng, i) for i in range(total)]
    batches = [events[i : i + batchSize] for i in range(0, total, batchSize)]
    body = b"".join(
        json.dumps({"run_id": [0] * 16, "seq": n + 1, "events": b}, separators=(",", ":")).encode() + b"\n"
        for n, b in enumerate(batches)
    )

    # Reference: the same rows, the same schema, raw sqlite3 executemany.
    from fangs.orchestrator.core import parseBatchLine
    from fangs.orchestrator.db.connector import SQLITE
    from fangs.orchestrator.db.schema import MIGRATIONS, render

    tmp = tempfile.mkdtemp(prefix="fangs-bench-ref-")
    conn = sqlite3.connect(os.path.join(tmp, "ref.db"), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA synchronous=NORMAL")
    for m in sorted(MIGRATIONS):
        for statement in render(m, SQLITE):
            conn.execute(statement)
    runID = "ab" * 16
    conn.execute("INSERT INTO runs (id, state, job, queue_seq, created_ns) VALUES (?, 'running', '{}', 1, 0)", (runID,))
    rows = []
    for line in body.splitlines():
        seq, evs = parseBatchLine(line, runID)
        rows.extend((runID, e.seq, e.idx, e.type, e.ts_ns, 0, e.pid, e.data) for e in evs)
    start, startCPU = time.perf_counter(), time.process_time()
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO events (run_id, seq, idx, type, ts_ns, received_ns, pid, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows
    )
    conn.execute("COMMIT")
    refSeconds = time.perf_counter() - start
    refCPU = time.process_time() - startCPU
    conn.close()
    refRate = total / refSeconds

    orch = Orchestrator()
    try:
        post(orch.url + "/v1/runners/register", {"runner_id": "bench", "proto_version": 1})
        code, queued = post(orch.url + "/v1/scans", {"target_runner": "bench", "Job": {"kind": "sandbox_scan", "sandbox": {"image": "fangs-sandbox/node:20"}, "duration": 3600 * 10**9}})
        runID = queued["run_id"]
        samples = _Sampler(orch.url + "/v1/runs/" + runID)
        pid = orch.proc.pid
        cpu0 = (cpuSeconds(pid), cpuSeconds(pid, pid))
        start = samples.start()
        code, ack = post(orch.url + "/v1/runs/%s/events" % (runID,), body, {"Content-Type": "application/x-ndjson"})
        seconds = time.perf_counter() - start
        cpu1 = (cpuSeconds(pid), cpuSeconds(pid, pid))
        samples.stop(seconds, total)
        assert code == 200 and ack["persisted"] == total, (code, ack)
    finally:
        orch.stop()
    rate = total / seconds
    SERIES["ingest"] = {"samples": samples.points, "total": total, "ref_rate": refRate}
    report("ingest", "events/s over one HTTP connection into SQLite (%dk, %d/batch)" % (total // 1000, batchSize),
           "%.0f/s" % rate, "executemany %.0f/s" % refRate, "ratio %.2f (target >= 0.5)" % (rate / refRate))
    # What explains it: the orchestrator's CPU per event, on the reactor
    # (HTTP, parsing) and on the store's thread (fingerprints, inserts,
    # commits), against the reference's; their sum over the wall time is
    # how much of one core the GIL let it use.
    reactorCPU = cpu1[1] - cpu0[1]
    storeCPU = (cpu1[0] - cpu0[0]) - reactorCPU
    report("ingest", "orchestrator CPU us/event: reactor thread + store thread",
           "%.1f + %.1f" % (reactorCPU / total * 1e6, storeCPU / total * 1e6), "executemany %.1f" % (refCPU / total * 1e6),
           "%.2f cores busy" % ((cpu1[0] - cpu0[0]) / seconds))


class _Sampler:
    """
    Polls a run's C{events_received} from a thread while the ingest POST
    runs, for the ingest plot.
    """

    def __init__(self, url: str, every: float = 0.1) -> None:
        import threading

        self.url = url
        self.every = every
        self.points: List[Tuple[float, int]] = [(0.0, 0)]
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = 0.0

    def start(self) -> float:
        self._start = time.perf_counter()
        self._thread.start()
        return self._start

    def _run(self) -> None:
        import urllib.request

        while not self._done.wait(self.every):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    n = json.loads(r.read())["events_received"]
                self.points.append((time.perf_counter() - self._start, n))
            except OSError:
                pass  # a missed sample is only a missing dot

    def stop(self, seconds: float, total: int) -> None:
        self._done.set()
        self._thread.join(10)
        self.points = sorted(p for p in self.points if p[0] <= seconds) + [(seconds, total)]
