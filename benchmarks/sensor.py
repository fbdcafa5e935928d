"""
Sensor benchmark (root, BCC, gcc):

1. Storm: a C program in a run's cgroup opens a watched file N times (default
   200,000) as fast as it can.  Prints captured/N and the run's kernel drops.
2. The same storm watched by Debian's C{opensnoop-bpfcc -n <comm>} for
   comparison (events printed / N, and its "lost samples" reports).
3. Host overhead: a host process (not watched) opening a file 1,000,000 times
   with the sensor unloaded and loaded; ratio of the loop times.

    python -m benchmarks.sensor [--opens 200000] [--host-opens 1000000]

L{benchSensor} (C{make bench}) runs it in a process of its own and reports
the figures.

Prints figures as measured; nothing is adjusted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater, react
from twisted.internet.utils import getProcessOutputAndValue

from benchmarks.common import REPO, report

STORM_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: storm PROCS|- PATH N\n"); return 2; }
    if (strcmp(argv[1], "-") != 0) {
        FILE *f = fopen(argv[1], "w");
        if (!f) { perror("cgroup.procs"); return 1; }
        fprintf(f, "%d\n", getpid());
        fclose(f);
    }
    long n = atol(argv[3]);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        int fd = open(argv[2], O_RDONLY);
        if (fd < 0) { perror("open"); return 1; }
        close(fd);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%ld\n", (b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec));
    return 0;
}
"""

# An opensnoop-style baseline for machines where opensnoop-bpfcc itself cannot
# run (Debian's 0.26 attaches fexit programs when the kernel has BTF, and has
# no tracepoint mode): the same sys_enter_openat tracepoint, an in-kernel comm
# filter, a perf buffer with opensnoop's default 64 pages per CPU and a Python
# callback per event, polled with perf_buffer_poll() as bcc tools do.
PERF_BASELINE = r"""
import ctypes, subprocess, sys, time
from bcc import BPF
exe, target, n = sys.argv[1], sys.argv[2], sys.argv[3]
b = BPF(text=b'''
struct ev_t { u32 pid; char comm[16]; char path[256]; };
BPF_PERF_OUTPUT(events);
TRACEPOINT_PROBE(syscalls, sys_enter_openat) {
    struct ev_t ev = {};
    bpf_get_current_comm(ev.comm, sizeof(ev.comm));
    const char want[] = "fangs-storm";
#pragma unroll
    for (int i = 0; i < sizeof(want); i++) if (ev.comm[i] != want[i]) return 0;
    ev.pid = bpf_get_current_pid_tgid() >> 32;
    bpf_probe_read_user_str(ev.path, sizeof(ev.path), args->filename);
    events.perf_submit(args, &ev, sizeof(ev));
    return 0;
}
''')
seen = [0]; lost = [0]
want = target.encode() + b"\0"
def cb(cpu, data, size):
    ev = ctypes.string_at(data, size)
    if ev[20:20 + len(want)] == want:
        seen[0] += 1
def lostcb(count):
    lost[0] += count
b["events"].open_perf_buffer(cb, page_cnt=64, lost_cb=lostcb)
p = subprocess.Popen([exe, "-", target, n], stdout=subprocess.PIPE)
while p.poll() is None:
    b.perf_buffer_poll(timeout=50)
end = time.monotonic() + 2
while time.monotonic() < end:
    b.perf_buffer_poll(timeout=50)
print(seen[0], lost[0], int(p.stdout.read()))
"""

STORM_NAME = "fangs-storm"  # comm of the storm program (opensnoop -n filter)


def buildStorm(directory: str) -> str:
    src = os.path.join(directory, "storm.c")
    exe = os.path.join(directory, STORM_NAME)
    with open(src, "w") as f:
        f.write(STORM_C)
    subprocess.run(["gcc", "-O2", "-o", exe, src], check=True)
    return exe


async def runStorm(reactor: Any, exe: str, procs: str, path: str, n: int) -> int:
    out, err, code = await getProcessOutputAndValue(exe, [procs, path, str(n)], reactor=reactor)
    if code != 0:
        raise RuntimeError("storm failed: %s" % (err.decode(errors="replace"),))
    return int(out.strip())


class _Collect(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.out = b""
        self.ended: Deferred = Deferred()
        self.ready: Deferred = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data
        if not self.ready.called and b"PATH" in self.out:
            self.ready.callback(None)

    def errReceived(self, data: bytes) -> None:
        self.out += data

    def processEnded(self, reason: Any) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError("exited before attaching"))
        self.ended.callback(None)


async def stormUnderSensor(reactor: Any, exe: str, tmp: str, n: int) -> Dict[str, Any]:
    from fangs.runner.sensor import Sensor
    from fangs.wire import RunID, WatchedPath

    sensor = Sensor(reactor)
    await sensor.start()
    try:
        runID = RunID(os.urandom(16))
        runDir = os.path.join(sensor.parentPath, runID.hex())
        leaf = os.path.join(runDir, "leaf")
        os.makedirs(leaf)
        try:
            target = os.path.join(tmp, "watched", "id_rsa")
            count = [0]

            def sink(t: int, p: Dict[str, Any]) -> None:
                if t == 1 and p["PathName"] == target:
                    count[0] += 1

            sensor.addRun(runID, os.stat(runDir).st_ino, [WatchedPath(os.path.dirname(target), cred_tagged=True)], sink)
            ns = await runStorm(reactor, exe, os.path.join(leaf, "cgroup.procs"), target, n)
            for _ in range(600):  # up to 60 s for userspace to catch up
                if count[0] >= n:
                    break
                await deferLater(reactor, 0.1, lambda: None)
            live = count[0]
            drops = sensor.dropsFor(runID)
            sensor.removeRun(runID)
            return {"n": n, "captured_live": live, "captured": count[0], "drops": drops, "storm_s": ns / 1e9}
        finally:
            for d in (leaf, runDir):
                for _ in range(50):
                    try:
                        os.rmdir(d)
                        break
                    except OSError:
                        await deferLater(reactor, 0.1, lambda: None)
    finally:
        sensor.stop()


async def stormUnderOpensnoop(reactor: Any, exe: str, tmp: str, n: int) -> Optional[Dict[str, Any]]:
    tool = shutil.which("opensnoop-bpfcc")
    if tool is None:
        return None
    target = os.path.join(tmp, "watched", "id_rsa")
    proto = _Collect()
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # its header tells us it is attached
    proc = reactor.spawnProcess(proto, tool, [tool, "-n", STORM_NAME], env=env)
    proto.ready.addTimeout(60, reactor)
    try:
        await proto.ready
    except Exception:
        if not proto.ended.called:
            try:
                proc.signalProcess(signal.SIGKILL)
            except Exception:
                pass  # already gone
            await proto.ended
        text = proto.out.decode(errors="replace").strip().splitlines()
        return {"error": text[-1] if text else "no output"}
    ns = await runStorm(reactor, exe, "-", target, n)
    await deferLater(reactor, 3.0, lambda: None)
    proc.signalProcess(signal.SIGINT)
    await proto.ended
    lines = proto.out.decode(errors="replace").splitlines()
    seen = sum(1 for line in lines if line.endswith(target))
    lost = sum(int(w) for line in lines if "lost" in line.lower() for w in line.split() if w.isdigit())
    return {"n": n, "captured": seen, "lost_reported": lost, "storm_s": ns / 1e9}


async def stormUnderPerfBaseline(reactor: Any, exe: str, tmp: str, n: int) -> Dict[str, Any]:
    target = os.path.join(tmp, "watched", "id_rsa")
    script = os.path.join(tmp, "perf_baseline.py")
    with open(script, "w") as f:
        f.write(PERF_BASELINE)
    out, err, code = await getProcessOutputAndValue(sys.executable, [script, exe, target, str(n)], env=dict(os.environ), reactor=reactor)
    if code != 0:
        raise RuntimeError("perf baseline failed: %s" % (err.decode(errors="replace")[-500:],))
    seen, lost, ns = (int(x) for x in out.split())
    return {"n": n, "captured": seen, "lost_reported": lost, "storm_s": ns / 1e9}


async def hostOverhead(reactor: Any, exe: str, tmp: str, n: int, rounds: int) -> Dict[str, Any]:
    from fangs.runner.sensor import Sensor
    from fangs.wire import RunID, WatchedPath

    target = os.path.join(tmp, "watched", "id_rsa")
    base: List[float] = []
    for _ in range(rounds):
        base.append(await runStorm(reactor, exe, "-", target, n) / n)
    sensor = Sensor(reactor)
    await sensor.start()
    loaded: List[float] = []
    try:
        runID = RunID(os.urandom(16))
        runDir = os.path.join(sensor.parentPath, runID.hex())
        os.makedirs(runDir)
        try:
            # A live run watching the very file the host opens: the host
            # process must still be filtered out at the cgroup test.
            sensor.addRun(runID, os.stat(runDir).st_ino, [WatchedPath(os.path.dirname(target), cred_tagged=True)], lambda t, p: None)
            for _ in range(rounds):
                loaded.append(await runStorm(reactor, exe, "-", target, n) / n)
            sensor.removeRun(runID)
        finally:
            os.rmdir(runDir)
    finally:
        sensor.stop()
    b, l = statistics.median(base), statistics.median(loaded)
    return {"n": n, "unloaded_ns_per_open": b, "loaded_ns_per_open": l, "ratio": l / b}


def _dockerRun(args: List[str]) -> float:
    import subprocess
    import time

    start = time.perf_counter()
    done = subprocess.run(["docker", "run", "--rm"] + args, capture_output=True, text=True, timeout=300)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError("docker run failed: %s" % (done.stderr[-500:],))
    return took


async def installOverhead(reactor: Any, rounds: int) -> Dict[str, Any]:
    """
    Wall time of the benign fixture's C{npm install} in a sandbox container,
    with the sensor loaded and the container's cgroup registered as a run,
    and with no sensor at all; alternating rounds, medians.
    """
    from twisted.internet.threads import deferToThread

    from fangs.runner import image
    from fangs.runner.sensor import Sensor
    from fangs.wire import RunID, WatchedPath

    await deferToThread(image.ensureFixturesImage)
    command = [
        image.FIXTURES_IMAGE, "sh", "-c",
        "cd /tmp && mkdir -p t && cd t && npm init -y >/dev/null 2>&1 && "
        "npm install --no-audit --no-fund --no-update-notifier --ignore-scripts=false /fixtures/benign-fixture.tgz >/dev/null 2>&1",
    ]
    sensor = Sensor(reactor)
    await sensor.start()
    events = [0]
    watched, unwatched = [], []
    try:
        await deferToThread(_dockerRun, ["--network", "none"] + command)  # warm the page cache
        for _ in range(rounds):
            unwatched.append(await deferToThread(_dockerRun, ["--network", "none"] + command))
            runID = RunID(os.urandom(16))
            runDir = os.path.join(sensor.parentPath, runID.hex())
            os.makedirs(runDir)
            try:
                paths = [WatchedPath(p) for p in ("/etc/", "/root/", "/tmp/", "/usr/", "/dev/")]

                def sink(t: int, p: Any) -> None:
                    events[0] += 1

                sensor.addRun(runID, os.stat(runDir).st_ino, paths, sink)
                watched.append(await deferToThread(
                    _dockerRun, ["--network", "none", "--cgroup-parent", "/fangs/" + runID.hex()] + command))
                sensor.removeRun(runID)
            finally:
                for _ in range(50):
                    try:
                        os.rmdir(runDir)
                        break
                    except OSError:
                        await deferLater(reactor, 0.1, lambda: None)
    finally:
        sensor.stop()
    w, u = statistics.median(watched), statistics.median(unwatched)
    return {"watched_s": w, "unwatched_s": u, "ratio": w / u, "events": events[0] // max(1, rounds)}


async def _main(reactor: Any, args: argparse.Namespace) -> None:
    results: Dict[str, Any] = {}
    tmp = tempfile.mkdtemp(prefix="fangs-bench-")
    try:
        os.mkdir(os.path.join(tmp, "watched"))
        open(os.path.join(tmp, "watched", "id_rsa"), "w").close()
        exe = buildStorm(tmp)
        print("storm: %d opens of a watched file in a run's cgroup" % (args.opens,))
        r = await stormUnderSensor(reactor, exe, tmp, args.opens)
        results["storm"] = r
        print(
            "  fangs sensor: captured %d/%d (%.2f%%), %d while live, kernel drops %d, storm took %.3f s"
            % (r["captured"], r["n"], 100.0 * r["captured"] / r["n"], r["captured_live"], r["drops"], r["storm_s"])
        )
        o = await stormUnderOpensnoop(reactor, exe, tmp, args.opens)
        results["opensnoop"] = o
        if o is None:
            print("  opensnoop-bpfcc: not installed")
        elif "error" in o:
            print("  opensnoop-bpfcc: cannot run on this machine: %s" % (o["error"],))
        else:
            print(
                "  opensnoop-bpfcc -n %s: printed %d/%d (%.2f%%), lost samples reported %d, storm took %.3f s"
                % (STORM_NAME, o["captured"], o["n"], 100.0 * o["captured"] / o["n"], o["lost_reported"], o["storm_s"])
            )
        p = await stormUnderPerfBaseline(reactor, exe, tmp, args.opens)
        results["perf_baseline"] = p
        print(
            "  opensnoop-style perf buffer baseline (tracepoint, 64 pages/CPU): captured %d/%d (%.2f%%), lost %d, storm took %.3f s"
            % (p["captured"], p["n"], 100.0 * p["captured"] / p["n"], p["lost_reported"], p["storm_s"])
        )
        print("host overhead: %d opens by a host process, median of %d rounds" % (args.host_opens, args.rounds))
        h = await hostOverhead(reactor, exe, tmp, args.host_opens, args.rounds)
        results["host"] = h
        print(
            "  unloaded %.0f ns/open, loaded %.0f ns/open, ratio %.3f"
            % (h["unloaded_ns_per_open"], h["loaded_ns_per_open"], h["ratio"])
        )
        if args.install_rounds:
            i = await installOverhead(reactor, args.install_rounds)
            results["install"] = i
            print(
                "npm install of the benign fixture: watched %.2f s, unwatched %.2f s, ratio %.3f (%d events per run)"
                % (i["watched_s"], i["unwatched_s"], i["ratio"], i["events"])
            )
    finally:
        shutil.rmtree(tmp, True)
    print("BENCH-JSON " + json.dumps(results, default=str))


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--opens", type=int, default=200_000)
    parser.add_argument("--host-opens", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--install-rounds", type=int, default=5)
    args = parser.parse_args(argv)
    react(lambda reactor: Deferred.fromCoroutine(_main(reactor, args)))


def benchSensor() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.sensor"], capture_output=True, text=True,
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


if __name__ == "__main__":
    main()
