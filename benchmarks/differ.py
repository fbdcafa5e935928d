"""
Benchmark of the differ's pure logic: extraction of 100,000 realistic
synthetic events and the diff against a baseline, on one core; and, in
C{make bench} (L{benchDiffer}), the delay from a result POST to the verdict
on a real orchestrator holding a 100k-event run.

    python -m benchmarks.differ [--events N] [--batch N]

Prints each phase and the total next to the target (< 2 s) as a ratio.
Deterministic (fixed seed); event construction is not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from typing import Any, Dict, Optional, Sequence, Tuple

from benchmarks.common import Orchestrator, post, realisticEvent, report
from fangs.orchestrator.allowlist import Allowlist, configEntries
from fangs.orchestrator.differ import FingerprintSet, diff, extract, planAnalysis
from tests.orchestrator.synthetic import syntheticEvents

TARGET_SECONDS = 2.0


def _pinToOneCore() -> Optional[int]:
    try:
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return cpu
    except (AttributeError, OSError):
        return None


def _best(repeat: int, fn: Any) -> Tuple[float, float, Any]:
    """
    Best wall-clock and best CPU time of C{repeat} calls, and the result.
    """
    walls, cpus = [], []
    result = None
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus), result


def run(
    count: int, batch: int, repeat: int = 3, out: Any = sys.stdout, cpu: Optional[int] = None
) -> Dict[str, float]:
    """
    Build the events, time the phases, write the report to C{out}.  C{cpu}
    is only reported (L{main} does the pinning).
    """
    events = syntheticEvents(count)
    baselineRun = extract(syntheticEvents(min(count, 20000), seed=2))
    baselineKeys = baselineRun.keys()
    allow = Allowlist(
        configEntries({"paths": ["/usr/lib/", "/usr/lib64/", "/usr/share/zoneinfo/",
                                 "/usr/share/locale/", "/usr/local/lib/"]}),
        "bench",
    )

    # 1. one-shot extraction
    oneShot, oneShotCPU, whole = _best(repeat, lambda: extract(events))

    # 2. incremental: one set per batch, rows merged as the store would
    def incrementally() -> Dict[Tuple[str, str], Any]:
        table: Dict[Tuple[str, str], Any] = {}
        for i in range(0, len(events), batch):
            for row in extract(events[i : i + batch]).rows():
                old = table.get(row.key)
                table[row.key] = row if old is None else old.merge(row)
        return table

    incremental, incrementalCPU, table = _best(repeat, incrementally)
    restored = FingerprintSet.fromRows(table.values())
    assert restored == whole, "incremental extraction differs from one-shot"

    # 3. diff + plan against the baseline
    def diffing() -> Any:
        deviations = diff(whole, baselineKeys, allow)
        plan = planAnalysis(whole, baselineKeys, allow, runState="ok", eventsDropped=0, hasBaseline=True)
        return deviations, plan

    diffWall, diffCPU, (deviations, plan) = _best(repeat, diffing)

    total = oneShot + diffWall
    totalCPU = oneShotCPU + diffCPU
    w = out.write
    w("differ benchmark: %d events, best of %d (%s)\n"
      % (count, repeat, "pinned to cpu %d" % cpu if cpu is not None else "unpinned"))
    w("  fingerprints: %d (+%d bookkeeping rows); baseline keys: %d\n"
      % (len(whole), len(whole.rows()) - len(whole), len(baselineKeys)))
    w("  deviations: %d, verdict %s: %s\n"
      % (len(deviations), plan.verdict, ", ".join("%s %s" % (d.severity.label, d.value) for d in deviations)))
    w("                                     wall      cpu\n")
    w("  extraction, one shot           : %7.3f s %7.3f s  (%.2f us/event)\n"
      % (oneShot, oneShotCPU, oneShot / count * 1e6))
    w("  extraction, batches of %-5d    : %7.3f s %7.3f s  (incl. row merge)\n"
      % (batch, incremental, incrementalCPU))
    w("  diff + plan                    : %7.3f s %7.3f s\n" % (diffWall, diffCPU))
    w("  total (one-shot + diff)        : %7.3f s %7.3f s  target < %.1f s  ratio %.2f (%.1fx headroom)\n"
      % (total, totalCPU, TARGET_SECONDS, total / TARGET_SECONDS, TARGET_SECONDS / total))
    return {"extract": oneShot, "incremental": incremental, "diff": diffing, "total": total}


def benchDiffer() -> None:
    import io

    affinity = os.sched_getaffinity(0)
    cpu = _pinToOneCore()
    try:
        out = io.StringIO()
        result = run(100_000, 500, 3, out=out, cpu=cpu)
    finally:
        os.sched_setaffinity(0, affinity)
    print(out.getvalue().rstrip())
    report("differ", "extraction + diff of a 100k-event run, one core", "%.3f s" % result["total"],
           "incremental %.3f s" % result["incremental"], "target < 2 s: %s (%.2f of target)" % ("met" if result["total"] < 2 else "NOT met", result["total"] / 2))

    # Delay from the result POST to the verdict, on a real orchestrator
    # holding a 100k-event run.
    rng = random.Random(11)
    events = [realisticEvent(rng, i) for i in range(100_000)]
    body = b"".join(
        json.dumps({"seq": n + 1, "events": events[i : i + 64]}, separators=(",", ":")).encode() + b"\n"
        for n, i in enumerate(range(0, len(events), 64))
    )
    orch = Orchestrator()
    try:
        post(orch.url + "/v1/runners/register", {"runner_id": "bench", "proto_version": 1})
        delays, posts = [], []
        for attempt in range(2):
            code, queued = post(orch.url + "/v1/scans", {"target_runner": "bench", "Job": {"kind": "sandbox_scan", "package_name": "bench-pkg", "sandbox": {"image": "fangs-sandbox/node:20"}, "duration": 3600 * 10**9}})
            runID = queued["run_id"]
            import urllib.request

            urllib.request.urlopen(orch.url + "/v1/runners/bench/jobs", timeout=30).read()
            post(orch.url + "/v1/runs/%s/events" % (runID,), body, {"Content-Type": "application/x-ndjson"})
            start = time.perf_counter()
            post(orch.url + "/v1/runs/%s/result" % (runID,), {"status": "ok", "events_emitted": len(events)})
            posts.append(time.perf_counter() - start)
            while True:
                with urllib.request.urlopen(orch.url + "/v1/runs/" + runID, timeout=30) as r:
                    if json.loads(r.read())["verdict"] is not None:
                        break
                time.sleep(0.005)
            delays.append(time.perf_counter() - start)
    finally:
        orch.stop()
    # The second run is diffed against the first run's baseline.
    report("differ", "result POST -> verdict, 100k-event run against a baseline", "%.0f ms" % (delays[-1] * 1000),
           "result POST alone %.0f ms" % (posts[-1] * 1000), "target < 500 ms: %s" % ("met" if delays[-1] < 0.5 else "NOT met"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args(argv)
    cpu = _pinToOneCore()
    result = run(options.events, options.batch, options.repeat, cpu=cpu)
    return 0 if result["total"] < TARGET_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
