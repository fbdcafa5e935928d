"""
C{make bench}: every benchmark, each figure printed next to a reference
measured in the same run, as a ratio; then C{build/bench/report.md}.

    python -m benchmarks [NAME ...]     # all of them when no name is given
    python -m benchmarks --list         # the names, one a line, and what each measures
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Callable, Dict, List, Optional, Tuple

from benchmarks.common import REPO, RESULTS, SERIES, report

#: name -> (module, function, what it measures).  The function takes no
#: argument when it reports by itself, else C{report}.
_TABLE: List[Tuple[str, str, str, bool, str]] = [
    ("ingest", "benchmarks.ingest", "benchIngest", False, "events/s over HTTP into SQLite vs raw executemany"),
    ("longpoll", "benchmarks.longpoll", "benchLongPoll", False, "POST /v1/scans -> job latency and RSS, 2,000 runners polling"),
    ("differ", "benchmarks.differ", "benchDiffer", False, "extraction + diff of a 100k-event run; result POST -> verdict"),
    ("sensor", "benchmarks.sensor", "benchSensor", False, "watched-file open storm, host overhead, install overhead (root, BCC)"),
    ("mtls", "benchmarks.tls", "main", True, "mutual TLS vs plain HTTP, keep-alive and new connections"),
    ("watcher", "benchmarks.watcher", "main", True, "registry poll cycles over 1,000 packages"),
    ("ui", "benchmarks.ui", "main", True, "dashboard run detail of a 100k-event run"),
    ("postgres", "benchmarks.pg", "main", True, "PostgreSQL ingest vs SQLite; two orchestrators vs one"),
    ("stream", "benchmarks.stream", "main", True, "1,000 run-stream subscribers vs pollers"),
    ("egress", "benchmarks.egress", "main", True, "npm install behind the egress gateway vs the open bridge (root, Docker)"),
]


def _lazy(module: str, function: str, takesReport: bool) -> Callable[[], None]:
    def run() -> None:
        fn = getattr(importlib.import_module(module), function)
        fn(report) if takesReport else fn()

    return run


BENCHES: Dict[str, Callable[[], None]] = {name: _lazy(m, f, r) for name, m, f, r, _ in _TABLE}

def main(argv: Optional[List[str]] = None) -> int:
    names = argv if argv is not None else sys.argv[1:]
    if names and names[0] in ("-h", "--help"):
        print(__doc__.strip())
        print("\nbenchmarks:")
        for name, _, _, _, what in _TABLE:
            print("  %-10s %s" % (name, what))
        return 0
    if names and names[0] in ("-l", "--list"):
        for name, _, _, _, what in _TABLE:
            print("%-10s %s" % (name, what))
        return 0
    names = names or list(BENCHES)
    failed = []
    for name in names:
        if name not in BENCHES:
            print("unknown benchmark %r; choose from %s" % (name, ", ".join(BENCHES)), file=sys.stderr)
            return 2
        print("== %s" % (name,), flush=True)
        try:
            BENCHES[name]()
        except Exception as e:
            failed.append(name)
            print("benchmark %s failed: %s: %s" % (name, type(e).__name__, e), file=sys.stderr, flush=True)
    if "sensor" in names:
        print("== sensor plot points", flush=True)
        from benchmarks import report as bench_report

        points = bench_report.measureSensor()
        if points is not None:
            SERIES["sensor"] = points
    writeReport()
    return 1 if failed else 0


PLOTS = [("Ingest rate over the 100k-event stream", "ingest.png"), ("Sensor capacity", "sensor.png")]


def writeReport() -> None:
    """
    C{build/bench/report.md} (a table per area) and the plots of this run.
    """
    from benchmarks import report as bench_report

    out = os.path.join(REPO, "build", "bench")
    os.makedirs(out, exist_ok=True)
    for _, image in PLOTS:  # never show a plot from an earlier run
        if os.path.exists(os.path.join(out, image)):
            os.remove(os.path.join(out, image))
    try:
        if "ingest" in SERIES:
            s = SERIES["ingest"]
            bench_report.plotIngest(s["samples"], s["total"], s["ref_rate"], os.path.join(out, "ingest.png"))
        if "sensor" in SERIES:
            bench_report.plotSensor(SERIES["sensor"], os.path.join(out, "sensor.png"))
    except ImportError as e:
        print("plots skipped (%s): pip install 'matplotlib >= 3.7'" % (e,), file=sys.stderr)
    path = bench_report.writeReport(RESULTS, out, PLOTS)
    print("report written to %s" % (path,))


if __name__ == "__main__":
    sys.exit(main())
