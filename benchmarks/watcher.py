"""
Watcher benchmark: one poll cycle over 1,000 watched packages against the fake
registry on loopback (served by a child process), into a real SQLite store
and the real orchestrator core.

    python -m benchmarks.watcher          # prints the rows
    main(report) from benchmarks.__main__

Figures: the seeding cycle (every package answers 200 and gets its latest
version queued), a cycle where every package answers 304, and a cycle where
every package has one new version.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = 1000
VERSIONS = 5


def serve(port: int, n: int) -> None:
    """
    Child: the fake registry with C{n} packages; SIGUSR1 publishes one more
    version of every package.
    """
    import signal

    from twisted.internet import reactor
    from twisted.web.server import Site

    from tests.orchestrator.fakeregistry import FakeRegistry

    fake = FakeRegistry(abbreviatedHasTimes=True)
    names = ["pkg-%04d" % i if i % 10 else "@scope%d/pkg-%04d" % (i % 7, i) for i in range(n)]
    for name in names:
        for v in range(VERSIONS):
            fake.publish(name, "1.%d.0" % (v,))
    bumped = [VERSIONS]

    def bump(*_: Any) -> None:
        def do() -> None:
            for name in names:
                fake.publish(name, "1.%d.0" % (bumped[0],))
            bumped[0] += 1
            sys.stdout.write("bumped\n")
            sys.stdout.flush()

        reactor.callFromThread(do)

    signal.signal(signal.SIGUSR1, bump)
    p = reactor.listenTCP(port, Site(fake), interface="127.0.0.1", backlog=1024)
    sys.stdout.write("ready %d\n" % (p.getHost().port,))
    sys.stdout.flush()
    reactor.run()


def measure(n: int = PACKAGES) -> Dict[str, float]:
    """
    Child: run three watcher cycles against a registry grandchild; return
    the seconds of each.
    """
    import signal

    from treq.client import HTTPClient
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.web.client import Agent, HTTPConnectionPool

    from fangs.orchestrator.compose import composeOrchestrator, watcherSubmit
    from fangs.orchestrator.config import OrchestratorConfig
    from fangs.orchestrator.registryclient import RegistryClient
    from fangs.orchestrator.store import SQLiteStore
    from fangs.orchestrator.watcher import DEFAULT_CONCURRENCY, Watcher

    env = dict(os.environ, PYTHONPATH=REPO)
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.watcher", "serve", "0", str(n)],
        stdout=subprocess.PIPE, env=env, cwd=REPO,
    )
    assert server.stdout is not None
    line = server.stdout.readline().decode().split()
    assert line and line[0] == "ready", line
    url = "http://127.0.0.1:%s" % (line[1],)
    results: Dict[str, float] = {}

    async def go() -> None:
        tmp = tempfile.mkdtemp(prefix="fangs-bench-watch-")
        store = SQLiteStore(os.path.join(tmp, "fangs.db"), reactor)
        await store.start()
        core = composeOrchestrator(reactor, store, OrchestratorConfig()).core
        for i in range(n):
            name = "pkg-%04d" % i if i % 10 else "@scope%d/pkg-%04d" % (i % 7, i)
            await store.addPackage(name, "bench", 1)
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = DEFAULT_CONCURRENCY
        client = RegistryClient(HTTPClient(Agent(reactor, pool=pool)), reactor, url)

        watcher = Watcher(reactor, store, client, watcherSubmit(core))
        for label in ("seed", "304", "new"):
            if label == "new":
                server.send_signal(signal.SIGUSR1)
                assert server.stdout.readline().strip() == b"bumped"
            start = time.perf_counter()
            stats = await watcher.pollOnce()
            results[label] = time.perf_counter() - start
            results[label + "_queued"] = stats.queued
            results[label + "_errors"] = stats.errors
            results[label + "_not_modified"] = stats.not_modified
        results["parsed"] = client.parsed
        results["requests"] = client.requests
        await pool.closeCachedConnections()
        store.stop()

    def stop(_: Any) -> None:
        reactor.stop()

    def start() -> None:
        d = Deferred.fromCoroutine(go())
        d.addErrback(lambda f: (f.printTraceback(), results.setdefault("failed", 1)))
        d.addBoth(stop)

    try:
        reactor.callWhenRunning(start)
        reactor.run()
    finally:
        server.terminate()
        server.wait(10)
    return results


def main(report: Callable[[str, str, str, str, str], None]) -> None:
    env = dict(os.environ, PYTHONPATH=REPO)
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.watcher", "measure", str(PACKAGES)],
        stdout=subprocess.PIPE, env=env, cwd=REPO, check=True,
    ).stdout
    r = json.loads(out.decode().strip().splitlines()[-1])
    if r.get("failed"):
        raise RuntimeError("watcher bench failed: %r" % (r,))
    report("watcher", "poll cycle, %d packages, all 200 (seed: %d queued)" % (PACKAGES, r["seed_queued"]),
           "%.2f s" % r["seed"], "target < 30 s", "ratio %.2f of target" % (r["seed"] / 30))
    report("watcher", "poll cycle, %d packages, all 304 (%d unchanged)" % (PACKAGES, r["304_not_modified"]),
           "%.2f s" % r["304"], "target < 5 s", "ratio %.2f of target" % (r["304"] / 5))
    report("watcher", "poll cycle, %d packages, one new version each (%d queued)" % (PACKAGES, r["new_queued"]),
           "%.2f s" % r["new"], "target < 30 s", "ratio %.2f of target" % (r["new"] / 30))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(int(sys.argv[2]), int(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "measure":
        print(json.dumps(measure(int(sys.argv[2]))))
    else:
        def _print(area: str, figure: str, value: str, reference: str, ratio: str) -> None:
            print("%-10s %-58s %16s   ref %-28s %s" % (area, figure, value, reference, ratio), flush=True)

        main(_print)
