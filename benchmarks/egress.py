"""
Egress containment benchmark (root, Docker, iptables, the npm registry):
the wall time of a real scan's sandbox, C{npm install is-number@7.0.0} by the
product's own install command, on today's open bridge and contained behind
the run's egress gateway (the contained time includes making and removing
the run's network, rules and gateway).  Rounds alternate the two so the
registry's and the machine's drift hit both alike; medians are compared.

    python -m benchmarks.egress [--rounds 5] [--package is-number@7.0.0]

Prints the figures as measured and one C{BENCH-JSON} line; C{make bench}
(L{benchmarks.__main__}) runs it as the C{egress} benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional

from twisted.internet.defer import Deferred
from twisted.internet.task import react


async def _scanOnce(reactor: Any, sandbox: Any, manager: Any, policy: str, package: str, version: str) -> float:
    from fangs.runner.sandbox import npmInstallCommand
    from fangs.wire import Job, RunID, SandboxSpec

    spec = SandboxSpec(command=npmInstallCommand(package, version), user="0:0", egress_policy=policy)
    job = Job(run_id=RunID(os.urandom(16)), kind="sandbox_scan", sandbox=spec)
    start = time.monotonic()  # a measurement, not logic
    egress = await manager.open(job, 0, lambda t, p: None)
    try:
        handle = await sandbox.launch(job.run_id, egress.job.sandbox, "")
        egress.baitPlanted(handle.bait)
        info = await handle.wait()
        logs = await handle.logs(20)
        await handle.stop(timeout=0)
    finally:
        await egress.close()
    elapsed = time.monotonic() - start
    if info.exitCode != 0:
        raise RuntimeError("npm install failed under %s: %s" % (policy, logs[-500:]))
    return elapsed


async def _main(reactor: Any, args: argparse.Namespace) -> None:
    from fangs.runner.egress import EgressManager
    from fangs.runner.sandbox import DockerSandbox

    package, _, version = args.package.rpartition("@")
    sandbox = DockerSandbox(reactor)
    manager = EgressManager(reactor)
    times: Dict[str, List[float]] = {"open": [], "contain": []}
    await _scanOnce(reactor, sandbox, manager, "open", package, version)  # warm the page cache and npm's CDN
    for i in range(args.rounds):
        for policy in (("open", "contain") if i % 2 == 0 else ("contain", "open")):
            t = await _scanOnce(reactor, sandbox, manager, policy, package, version)
            times[policy].append(t)
            print("  round %d %-8s %.2f s" % (i + 1, policy, t), flush=True)
    o, c = statistics.median(times["open"]), statistics.median(times["contain"])
    result = {"package": args.package, "rounds": args.rounds, "open_s": o, "contain_s": c, "ratio": c / o,
              "open_all": times["open"], "contain_all": times["contain"]}
    print("scan of %s: open bridge %.2f s, contained %.2f s, ratio %.3f (median of %d)"
          % (args.package, o, c, c / o, args.rounds))
    print("BENCH-JSON " + json.dumps(result))


def run(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--package", default="is-number@7.0.0")
    args = parser.parse_args(argv)
    react(lambda reactor: Deferred.fromCoroutine(_main(reactor, args)))


def main(report: Callable[..., None]) -> None:
    """
    The C{egress} benchmark of C{make bench}: runs this module in its own
    process (its own reactor) and reports the ratio.
    """
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-m", "benchmarks.egress"], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=repo), timeout=1800)
    lines = out.stdout.splitlines()
    print("\n".join(line for line in lines if not line.startswith("BENCH-JSON")))
    data = [json.loads(line[len("BENCH-JSON "):]) for line in lines if line.startswith("BENCH-JSON ")]
    if out.returncode != 0 or not data:
        raise RuntimeError("egress benchmark failed: %s" % (out.stderr[-2000:],))
    r = data[0]
    report("egress", "scan of %s (npm install), contained behind the gateway" % (r["package"],),
           "%.2f s" % r["contain_s"], "open bridge %.2f s" % r["open_s"],
           "ratio %.3f (target <= 1.10)" % r["ratio"])


if __name__ == "__main__":
    run()
