"""
The C{make bench} report: C{build/bench/report.md} with one table per area
(figure, value, reference measured in the same run, ratio or target), and
two plots drawn with matplotlib from the same run:

- C{ingest.png}: events persisted over the course of the 100k-event stream,
  sampled from the orchestrator (C{GET /v1/runs/<id>} C{events_received})
  while the POST runs, next to the raw C{executemany} rate as a line;
- C{sensor.png}: sensor capacity, events captured against events generated
  for a few storm sizes, next to an opensnoop-style perf-buffer baseline.

    python -m benchmarks.report sensor-points OUT.json [N ...]

measures the sensor points in a process of its own (it runs a reactor and
needs root, BCC and gcc).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

SENSOR_SIZES = (10_000, 50_000, 100_000, 200_000)


def writeReport(results: Sequence[Tuple[str, str, str, str, str]], outDir: str, plots: Sequence[Tuple[str, str]] = ()) -> str:
    """
    Write C{report.md}: a table per area, in the order areas were measured,
    then the plots that exist.
    """
    os.makedirs(outDir, exist_ok=True)
    path = os.path.join(outDir, "report.md")
    areas: Dict[str, List[Tuple[str, str, str, str, str]]] = {}
    for row in results:
        areas.setdefault(row[0], []).append(row)
    with open(path, "w") as f:
        f.write("# FANGS benchmark report\n\n")
        f.write("Measured on %s, one run of `make bench`. Each figure sits next to a reference measured in the same run"
                " on the same machine; the last column is their ratio or the target it is held to.\n\n" % (time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),))
        if not areas:
            f.write("No benchmark produced a figure.\n\n")
        for area, rows in areas.items():
            f.write("## %s\n\n| figure | value | reference (same run) | ratio / target |\n|---|---|---|---|\n" % (area,))
            for _, figure, value, reference, ratio in rows:
                f.write("| %s |\n" % (" | ".join(_cell(c) for c in (figure, value, reference, ratio)),))
            f.write("\n")
        for title, image in plots:
            if os.path.exists(os.path.join(outDir, image)):
                f.write("## %s\n\n![%s](%s)\n\n" % (title, title, image))
    return path


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plotIngest(samples: Sequence[Tuple[float, int]], total: int, refRate: float, path: str) -> None:
    """
    Events persisted against seconds since the POST began, and the line the
    raw executemany rate would draw.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ts = [t for t, _ in samples]
    ns = [n for _, n in samples]
    ax.plot(ts, ns, marker=".", linewidth=1.5, label="orchestrator: events persisted (HTTP, one connection)")
    end = max(ts[-1] if ts else 0.0, total / refRate if refRate else 0.0)
    if refRate:
        ax.plot([0, total / refRate], [0, total], linestyle="--", color="grey", label="reference: raw executemany, %.0f events/s" % (refRate,))
    if ts and ts[-1] > 0:
        ax.set_title("Ingest of %dk events: %.0f events/s overall" % (total // 1000, ns[-1] / ts[-1]))
    ax.set_xlabel("seconds since the POST began")
    ax.set_ylabel("events persisted")
    ax.set_xlim(0, end * 1.05 if end else 1)
    ax.set_ylim(0, total * 1.05)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plotSensor(points: Dict[str, Any], path: str) -> None:
    """
    Events captured against events generated, per storm size, for the FANGS
    sensor and the perf-buffer baseline, with the ideal y = x.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ns = [p["n"] for p in points["fangs"]]
    top = max(ns) if ns else 1
    ax.plot([0, top], [0, top], linestyle=":", color="grey", label="every event (y = x)")
    ax.plot(ns, [p["captured"] for p in points["fangs"]], marker="o", label="FANGS sensor (ring buffer)")
    if points.get("baseline"):
        ax.plot([p["n"] for p in points["baseline"]], [p["captured"] for p in points["baseline"]], marker="s", label="opensnoop-style perf buffer, 64 pages/CPU")
    ax.set_title("Sensor capacity: opens of a watched file, as fast as one process can")
    ax.set_xlabel("events generated (open() calls in the storm)")
    ax.set_ylabel("events captured")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -- sensor points, in a process of their own ------------------------------------


async def _sensorPoints(reactor: Any, sizes: Sequence[int]) -> Dict[str, Any]:
    from benchmarks import sensor as bench_sensor

    tmp = tempfile.mkdtemp(prefix="fangs-bench-plot-")
    try:
        os.mkdir(os.path.join(tmp, "watched"))
        open(os.path.join(tmp, "watched", "id_rsa"), "w").close()
        exe = bench_sensor.buildStorm(tmp)
        out: Dict[str, Any] = {"fangs": [], "baseline": []}
        for n in sizes:
            r = await bench_sensor.stormUnderSensor(reactor, exe, tmp, n)
            out["fangs"].append({"n": n, "captured": r["captured"], "drops": r["drops"]})
            try:
                p = await bench_sensor.stormUnderPerfBaseline(reactor, exe, tmp, n)
                out["baseline"].append({"n": n, "captured": p["captured"], "lost": p["lost_reported"]})
            except Exception as e:  # the baseline is a comparison, not the subject
                out.setdefault("baseline_error", str(e)[-300:])
        return out
    finally:
        shutil.rmtree(tmp, True)


def measureSensor(sizes: Sequence[int] = SENSOR_SIZES, timeout: float = 900) -> Optional[Dict[str, Any]]:
    """
    Run the sensor storms in a child process; None when they cannot run
    here (not root, no BCC, no gcc), with the reason printed.
    """
    import subprocess

    out = tempfile.mktemp(prefix="fangs-sensor-points-", suffix=".json")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.report", "sensor-points", out] + [str(n) for n in sizes],
        capture_output=True, text=True, timeout=timeout,
    )
    if proc.returncode != 0 or not os.path.exists(out):
        print("sensor plot skipped: %s" % ((proc.stderr or proc.stdout).strip().splitlines() or ["no output"])[-1], file=sys.stderr)
        return None
    with open(out) as f:
        data = json.load(f)
    os.remove(out)
    return data


def main(argv: Optional[List[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] != "sensor-points":
        print("usage: python -m benchmarks.report sensor-points OUT.json [N ...]", file=sys.stderr)
        return 2
    sizes = [int(a) for a in args[2:]] or list(SENSOR_SIZES)
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    async def run(reactor: Any) -> None:
        data = await _sensorPoints(reactor, sizes)
        with open(args[1], "w") as f:
            json.dump(data, f)

    react(lambda reactor: Deferred.fromCoroutine(run(reactor)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
