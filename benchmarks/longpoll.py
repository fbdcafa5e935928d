"""
Long-poll benchmark: N runners register and long-poll one orchestrator at
once; scans are submitted one at a time to random runners and the time from
C{POST /v1/scans} to the job arriving at its runner is measured.
L{benchLongPoll} starts the orchestrator and runs the clients in a child
process of their own:

    python -m benchmarks.longpoll URL RUNNERS SCANS ORCHESTRATOR_PID
"""

import json
import os
import random
import subprocess
import sys
import time

from twisted.internet import defer, task
from twisted.web.client import Agent, HTTPConnectionPool

from benchmarks.common import REPO, Orchestrator, raiseFileLimit, report


def rss(pid: int) -> int:
    with open("/proc/%d/status" % (pid,)) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def clients(reactor, url: str, runners: int, scans: int, pid: int) -> None:
    from treq.client import HTTPClient

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = runners + 50
    client = HTTPClient(Agent(reactor, pool=pool))
    idle = rss(pid)
    waiting = {}
    arrived = {}
    stop = [False]

    async def runner(i: int) -> None:
        rid = "bench-%04d" % (i,)
        r = await client.post(url + "/v1/runners/register", json={"runner_id": rid, "proto_version": 1})
        await r.content()
        while not stop[0]:
            r = await client.get(url + "/v1/runners/%s/jobs" % (rid,), timeout=60)
            body = await r.content()
            if r.code == 200:
                job = json.loads(body)
                d = waiting.pop(bytes(job["run_id"]).hex(), None)
                if d is not None:
                    d.callback(time.perf_counter())

    loops = []
    for i in range(runners):
        loops.append(defer.Deferred.fromCoroutine(runner(i)))
        if i % 100 == 99:
            await task.deferLater(reactor, 0.05, lambda: None)
    await task.deferLater(reactor, 5.0, lambda: None)
    loaded = rss(pid)
    rng = random.Random(1)
    latencies = []
    for n in range(scans):
        i = rng.randrange(runners)
        d = defer.Deferred()
        t0 = time.perf_counter()
        r = await client.post(url + "/v1/scans", json={"target_runner": "bench-%04d" % (i,), "Job": {"kind": "sandbox_scan", "sandbox": {"image": "fangs-sandbox/node:20"}}})
        body = json.loads(await r.content())
        waiting[body["run_id"]] = d
        t1 = await d
        latencies.append(t1 - t0)
    loaded = max(loaded, rss(pid))
    stop[0] = True
    print(json.dumps({"latencies": latencies, "rss": loaded, "rss_idle": idle}))
    sys.stdout.flush()
    os._exit(0)


def benchLongPoll(runners: int = 2000, scans: int = 300) -> None:
    raiseFileLimit()
    orch = Orchestrator(["--poll-wait", "25"])
    try:
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.longpoll", orch.url, str(runners), str(scans), str(orch.proc.pid)],
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


if __name__ == "__main__":
    url, runners, scans, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    task.react(lambda reactor: defer.Deferred.fromCoroutine(clients(reactor, url, runners, scans, pid)))
