"""
Sensor benchmark (root, BCC, gcc):

1. Storm: a C program in a run's cgroup opens a watched file N times (default
   200,000) as fast as it can.  Prints captured/N and the run's kernel drops.
2. The same storm watched by Debian's C{opensnoop-bpfcc -n <comm>} for
   comparison (events printed / N, and its "lost samples" reports).
3. Host overhead: a host process (not watched) opening a file 1,000,000 times
   with the sensor unloaded and loaded; ratio of the loop times.

    python -m fangs.runner.bench_sensor [--opens 200000] [--host-opens 1000000]

Prints figures as measured; nothing is adjusted.
"""

from __future__ import annotations

import argparse
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
    proc = reactor.spawnProcess(proto, tool, [tool, "-n", STORM_NAME], env=dict(os.environ))
    await proto.ready
    ns = await runStorm(reactor, exe, "-", target, n)
    await deferLater(reactor, 3.0, lambda: None)
    proc.signalProcess(signal.SIGINT)
    await proto.ended
    lines = proto.out.decode(errors="replace").splitlines()
    seen = sum(1 for line in lines if line.endswith(target))
    lost = sum(int(w) for line in lines if "lost" in line.lower() for w in line.split() if w.isdigit())
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


async def _main(reactor: Any, args: argparse.Namespace) -> None:
    tmp = tempfile.mkdtemp(prefix="fangs-bench-")
    try:
        os.mkdir(os.path.join(tmp, "watched"))
        open(os.path.join(tmp, "watched", "id_rsa"), "w").close()
        exe = buildStorm(tmp)
        print("storm: %d opens of a watched file in a run's cgroup" % (args.opens,))
        r = await stormUnderSensor(reactor, exe, tmp, args.opens)
        print(
            "  fangs sensor: captured %d/%d (%.2f%%), %d while live, kernel drops %d, storm took %.3f s"
            % (r["captured"], r["n"], 100.0 * r["captured"] / r["n"], r["captured_live"], r["drops"], r["storm_s"])
        )
        o = await stormUnderOpensnoop(reactor, exe, tmp, args.opens)
        if o is None:
            print("  opensnoop-bpfcc: not installed")
        else:
            print(
                "  opensnoop-bpfcc -n %s: printed %d/%d (%.2f%%), lost samples reported %d, storm took %.3f s"
                % (STORM_NAME, o["captured"], o["n"], 100.0 * o["captured"] / o["n"], o["lost_reported"], o["storm_s"])
            )
        print("host overhead: %d opens by a host process, median of %d rounds" % (args.host_opens, args.rounds))
        h = await hostOverhead(reactor, exe, tmp, args.host_opens, args.rounds)
        print(
            "  unloaded %.0f ns/open, loaded %.0f ns/open, ratio %.3f"
            % (h["unloaded_ns_per_open"], h["loaded_ns_per_open"], h["ratio"])
        )
    finally:
        shutil.rmtree(tmp, True)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--opens", type=int, default=200_000)
    parser.add_argument("--host-opens", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    react(lambda reactor: Deferred.fromCoroutine(_main(reactor, args)))


if __name__ == "__main__":
    main()
