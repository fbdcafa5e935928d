"""
Dashboard benchmark: the first screen of the run detail page of a
100,000-event run (the deviations, the process tree from the first events,
the first page of events) served by a real C{twistd fangs-orchestrator}, next
to C{GET /v1/runs/<id>} (the JSON of the same run: counts per type and
deviations) measured in the same run.  Target: < 300 ms.

    python -m benchmarks.ui [--events N] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
import urllib.request
from typing import Any, Callable, List, Optional, Sequence

TARGET_MS = 300.0


def _get(url: str) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as r:
        body = r.read()
        assert r.status == 200, r.status
    elapsed = time.perf_counter() - start
    assert body
    return elapsed * 1000.0


def _median(url: str, repeat: int) -> float:
    _get(url)  # warm: templates compiled, pages cached by SQLite
    return statistics.median(_get(url) for _ in range(repeat))


def fill(base: str, events: int, post: Callable[..., Any], realisticEvent: Callable[..., Any]) -> str:
    """
    One finished run of C{events} realistic events, through the HTTP API.
    """
    code, _ = post(base + "/v1/runners/register", {"runner_id": "bench-ui", "proto_version": 1})
    assert code == 200, code
    code, queued = post(base + "/v1/scans", {"target_runner": "bench-ui", "Job": {
        "kind": "sandbox_scan", "package_name": "bench-ui-pkg", "version": "1.0.0", "sandbox": {"image": "fangs-sandbox/node:20"}}})
    assert code == 202, queued
    runID = queued["run_id"]
    with urllib.request.urlopen(base + "/v1/runners/bench-ui/jobs", timeout=60) as r:
        r.read()
    rng = random.Random(11)
    batch, seq, lines = 500, 0, []
    for start in range(0, events, batch):
        seq += 1
        chunk = [realisticEvent(rng, i) for i in range(start, min(start + batch, events))]
        lines.append(json.dumps({"seq": seq, "events": chunk}, separators=(",", ":")).encode() + b"\n")
        if len(lines) == 40:
            code, ack = post(base + "/v1/runs/%s/events" % (runID,), b"".join(lines), {"Content-Type": "application/x-ndjson"})
            assert code == 200, ack
            lines = []
    if lines:
        code, ack = post(base + "/v1/runs/%s/events" % (runID,), b"".join(lines), {"Content-Type": "application/x-ndjson"})
        assert code == 200, ack
    code, _ = post(base + "/v1/runs/%s/result" % (runID,), {"status": "ok", "events_emitted": events, "events_dropped": 0})
    assert code == 200
    for _ in range(600):
        with urllib.request.urlopen(base + "/v1/runs/" + runID, timeout=60) as r:
            if json.loads(r.read())["verdict"]:
                break
        time.sleep(0.1)
    return runID


def run(report: Callable[[str, str, str, str, str], None], events: int = 100_000, repeat: int = 15) -> float:
    from benchmarks import common as B

    orch = B.Orchestrator(["--watch-interval", "0", "--auth", "none"])
    try:
        runID = fill(orch.url, events, B.post, B.realisticEvent)
        page = _median(orch.url + "/ui/runs/" + runID, repeat)
        ref = _median(orch.url + "/v1/runs/" + runID, repeat)
        verdict = "PASS" if page < TARGET_MS else "FAIL"
        report("ui", "run detail first screen, %dk-event run (median of %d)" % (events // 1000, repeat),
               "%.0f ms" % (page,), "GET /v1/runs/<id> %.0f ms" % (ref,),
               "%.1fx ref; target < %.0f ms: %s" % (page / ref if ref else 0, TARGET_MS, verdict))
        filtered = _median(orch.url + "/ui/runs/%s?type=exec" % (runID,), repeat)
        later = _median(orch.url + "/ui/runs/%s?after=150.0" % (runID,), repeat)
        report("ui", "run detail, exec events only / page 150 of events", "%.0f / %.0f ms" % (filtered, later),
               "GET /v1/runs/<id> %.0f ms" % (ref,), "%.1fx / %.1fx ref" % (filtered / ref if ref else 0, later / ref if ref else 0))
        overview = _median(orch.url + "/ui/", repeat)
        report("ui", "overview with that run stored", "%.0f ms" % (overview,), "GET /v1/runs/<id> %.0f ms" % (ref,),
               "%.1fx ref" % (overview / ref if ref else 0,))
        return page
    finally:
        orch.stop()


def main(report: Optional[Callable[[str, str, str, str, str], None]] = None, argv: Optional[Sequence[str]] = None) -> int:
    """
    From C{make bench} (C{report} given), or standalone.
    """
    if report is not None:
        run(report)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=15)
    options = parser.parse_args(argv)
    rows: List[Any] = []

    def printRow(*row: str) -> None:
        rows.append(row)
        print("%-6s %-58s %14s   ref %-28s %s" % row, flush=True)

    page = run(printRow, options.events, options.repeat)
    return 0 if page < TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main(argv=sys.argv[1:]))
