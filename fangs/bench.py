"""
C{make bench}: every benchmark, each figure printed next to a reference
measured in the same run, as a ratio.  Nothing here is a pass/fail test.

    python -m fangs.bench [ingest] [longpoll] [differ] [sensor] ...
"""

from __future__ import annotations

import json
import os
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")

RESULTS: List[Tuple[str, str, str, str, str]] = []
#: Data behind the plots of the report, filled by the benchmarks that have some.
SERIES: Dict[str, Any] = {}


def report(area: str, figure: str, value: str, reference: str, ratio: str) -> None:
    RESULTS.append((area, figure, value, reference, ratio))
    print("%-10s %-58s %16s   ref %-28s %s" % (area, figure, value, reference, ratio), flush=True)


def raiseFileLimit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def freePort() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Orchestrator:
    """
    A C{twistd fangs-orchestrator} child process.
    """

    def __init__(self, extra: Optional[List[str]] = None, scheme: str = "http", certs: Optional[Dict[str, str]] = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="fangs-bench-")
        self.db = os.path.join(self.dir, "fangs.db")
        self.port = freePort()
        self.url = "%s://127.0.0.1:%d" % (scheme, self.port)
        self.log = open(os.path.join(self.dir, "orchestrator.log"), "wb")
        env = dict(os.environ, PYTHONPATH=REPO)
        self.proc = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "--logfile=" + os.path.join(self.dir, "twistd.log"),
             "fangs-orchestrator", "--addr", "127.0.0.1:%d" % (self.port,), "--db", self.db] + (extra or []),
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
        )
        import ssl
        import urllib.request

        context = None
        if certs is not None:
            context = ssl.create_default_context(cafile=certs["ca"])
            context.load_cert_chain(certs["client"], certs["client-key"])
        for _ in range(150):
            try:
                urllib.request.urlopen(self.url + "/v1/health", timeout=1, context=context).read()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("orchestrator did not start; see %s" % (self.dir,))

    def rssBytes(self) -> int:
        with open("/proc/%d/status" % (self.proc.pid,)) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def post(url: str, body: Any, headers: Optional[Dict[str, str]] = None) -> Tuple[int, Any]:
    import urllib.error
    import urllib.request

    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers or {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            content = r.read()
            return r.status, json.loads(content) if content else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


# ---------------------------------------------------------------------------
# Realistic events


_PATHS = [
    "/root/.npm/_cacache/content-v2/sha512/%02x/%02x/%s",
    "/root/.npm/_cacache/index-v5/%02x/%02x/%s",
    "/usr/lib/node_modules/npm/node_modules/%s/package.json",
    "/tmp/t/node_modules/%s/index.js",
    "/etc/ssl/certs/ca-certificates.crt",
    "/usr/lib/x86_64-linux-gnu/libc.so.6",
]


def realisticEvent(rng: random.Random, i: int) -> Dict[str, Any]:
    header = {
        "TsNs": 1_000_000_000 + i * 1000,
        "CgroupID": 4242,
        "RunID": [24, 178, 8, 156, 202, 190, 201, 128, 0, 0, 0, 0, 0, 0, 0, 1],
        "PID": 200 + i % 37,
        "TID": 200 + i % 37,
        "PPID": 199,
        "UID": 0,
        "GID": 0,
        "Type": 1,
        "Tags": 0,
    }
    r = rng.random()
    if r < 0.85:
        tmpl = rng.choice(_PATHS)
        h = "%040x" % rng.getrandbits(160)
        path = tmpl % (rng.getrandbits(8), rng.getrandbits(8), h) if tmpl.count("%") == 3 else (tmpl % ("pkg%d" % rng.randrange(300)) if "%s" in tmpl else tmpl)
        return {"type": 1, "payload": {"Header": header, "DFD": -100, "Flags": rng.choice([0, 0, 0, 524288, 577]), "PathLen": len(path), "Truncated": 0, "PathName": path, "CommStr": "node"}}
    if r < 0.93:
        header["Type"] = 2
        return {"type": 2, "payload": {"Header": header, "Argc": 3, "BinaryPathStr": "/bin/sh", "ArgvStrs": ["sh", "-c", "node install.js"], "CommStr": "sh"}}
    if r < 0.97:
        header["Type"] = 3
        return {"type": 3, "payload": {"Header": header, "Family": 2, "Source": 1, "DestPort": 443, "Sockfd": 21, "DestIP": "104.16.%d.%d" % (rng.randrange(256), rng.randrange(256)), "CommStr": "node"}}
    if r < 0.99:
        header["Type"] = 4
        return {"type": 4, "payload": {"Header": header, "Family": 2, "DestPort": 53, "QueryLen": 40, "QName": "registry.npmjs.org", "QType": 1, "DestIP": "127.0.0.11", "CommStr": "node"}}
    header["Type"] = 5
    return {"type": 5, "payload": {"Header": header, "Source": 3, "SourceName": "tcp_clienthello", "SniLen": 18, "SNI": "registry.npmjs.org", "DuplicateOf": "", "CommStr": "node"}}


# ---------------------------------------------------------------------------
# Ingest: HTTP into SQLite vs raw executemany


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
    start = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO events (run_id, seq, idx, type, ts_ns, received_ns, pid, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows
    )
    conn.execute("COMMIT")
    refSeconds = time.perf_counter() - start
    conn.close()
    refRate = total / refSeconds

    orch = Orchestrator()
    try:
        post(orch.url + "/v1/runners/register", {"runner_id": "bench", "proto_version": 1})
        code, queued = post(orch.url + "/v1/scans", {"target_runner": "bench", "Job": {"kind": "sandbox_scan", "sandbox": {"image": "fangs-sandbox/node:20"}, "duration": 3600 * 10**9}})
        runID = queued["run_id"]
        samples = _Sampler(orch.url + "/v1/runs/" + runID)
        start = samples.start()
        code, ack = post(orch.url + "/v1/runs/%s/events" % (runID,), body, {"Content-Type": "application/x-ndjson"})
        seconds = time.perf_counter() - start
        samples.stop(seconds, total)
        assert code == 200 and ack["persisted"] == total, (code, ack)
    finally:
        orch.stop()
    rate = total / seconds
    SERIES["ingest"] = {"samples": samples.points, "total": total, "ref_rate": refRate}
    report("ingest", "events/s over one HTTP connection into SQLite (%dk, %d/batch)" % (total // 1000, batchSize),
           "%.0f/s" % rate, "executemany %.0f/s" % refRate, "ratio %.2f (target >= 0.5)" % (rate / refRate))


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


# ---------------------------------------------------------------------------
# Long-poll: 2,000 runners waiting at once


def benchLongPoll(runners: int = 2000, scans: int = 300) -> None:
    raiseFileLimit()
    orch = Orchestrator(["--poll-wait", "25"])
    try:
        out = subprocess.run(
            [sys.executable, "-m", "fangs.bench_longpoll", orch.url, str(runners), str(scans), str(orch.proc.pid)],
            capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO), timeout=600,
        )
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        data = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        orch.stop()
    lat = sorted(data["latencies"])
    p50 = lat[len(lat) // 2] * 1000
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
    report("longpoll", "p99 POST /v1/scans -> job at its runner, %d polling" % (runners,), "%.1f ms" % p99,
           "p50 %.1f ms" % p50, "target < 20 ms: %s" % ("met" if p99 < 20 else "NOT met"))
    rss = data["rss"] / 2**20
    report("longpoll", "orchestrator RSS with %d runners long-polling" % (runners,), "%.0f MB" % rss,
           "idle %.0f MB" % (data["rss_idle"] / 2**20), "target < 300 MB: %s" % ("met" if rss < 300 else "NOT met"))


def benchDiffer() -> None:
    import io

    from fangs.orchestrator import bench_differ

    affinity = os.sched_getaffinity(0)
    cpu = bench_differ._pinToOneCore()
    try:
        out = io.StringIO()
        result = bench_differ.run(100_000, 500, 3, out=out, cpu=cpu)
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


BENCHES: Dict[str, Callable[[], None]] = {
    "ingest": benchIngest,
    "longpoll": benchLongPoll,
    "differ": benchDiffer,
}
BENCHES["sensor"] = lambda: benchSensor()


def _optional(name: str, module: str) -> None:
    def run() -> None:
        import importlib

        mod = importlib.import_module(module)
        mod.main(report)

    BENCHES[name] = run


_optional("mtls", "fangs.bench_tls")
_optional("watcher", "fangs.orchestrator.bench_watcher")
_optional("ui", "fangs.orchestrator.bench_ui")
_optional("postgres", "fangs.orchestrator.bench_pg")
_optional("stream", "fangs.orchestrator.bench_stream")
_optional("egress", "fangs.runner.bench_egress")


def benchSensor() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "fangs.runner.bench_sensor"], capture_output=True, text=True,
        env=dict(os.environ, PYTHONPATH=REPO), timeout=1200,
    )
    lines = out.stdout.splitlines()
    print("\n".join(l for l in lines if not l.startswith("BENCH-JSON")))
    data = [json.loads(l[len("BENCH-JSON "):]) for l in lines if l.startswith("BENCH-JSON ")]
    if out.returncode != 0 or not data:
        raise RuntimeError("sensor benchmark failed: %s" % (out.stderr[-2000:],))
    r = data[0]
    storm, base = r["storm"], r["perf_baseline"]
    report("sensor", "watched-file open storm captured, N = %d, in a run's cgroup" % (storm["n"],),
           "%d/%d, %d drops" % (storm["captured"], storm["n"], storm["drops"]),
           "perf-buffer tracepoint tool %d/%d" % (base["captured"], base["n"]),
           "%.3f of N (target 1.000, 0 drops)" % (storm["captured"] / storm["n"]))
    o = r.get("opensnoop")
    if o and "error" not in o:
        report("sensor", "the same storm seen by opensnoop-bpfcc", "%d/%d" % (o["captured"], o["n"]), "fangs %d/%d" % (storm["captured"], storm["n"]), "fangs/opensnoop %.3f" % (storm["captured"] / max(1, o["captured"])))
    else:
        report("sensor", "opensnoop-bpfcc on this kernel", "cannot run", (o or {}).get("error", "not installed")[:40], "compared with the perf-buffer tool instead")
    h = r["host"]
    report("sensor", "host process, 1M opens, sensor loaded / not loaded", "%.0f ns/open" % h["loaded_ns_per_open"],
           "unloaded %.0f ns/open" % h["unloaded_ns_per_open"], "ratio %.3f (target <= 1.10)" % h["ratio"])
    i = r.get("install")
    if i:
        report("sensor", "fixture npm install wall time, sensor attached / not", "%.2f s" % i["watched_s"],
               "unwatched %.2f s" % i["unwatched_s"], "ratio %.3f (target <= 1.05)" % i["ratio"])


def main(argv: Optional[List[str]] = None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or list(BENCHES)
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
        from fangs import bench_report

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
    from fangs import bench_report

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
