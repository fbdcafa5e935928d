"""
C{fangs scan submit}, and following a run until its verdict (C{--wait}).
"""

from __future__ import annotations

import time
from typing import Any, Dict, Optional

from fangs import npm, wire
from fangs.cli.context import Context, checkName, checkVersion
from fangs.cli.http import EXIT_DEVIATIONS, EXIT_ERROR, EXIT_OK, EXIT_USAGE, APIError, CLIError
from fangs.cli.registry import registryURL, registryResolve
from fangs.cli.render import short
from fangs.cli.runs import runSteps, showRun
from fangs.cli.stream import FINAL_LINES, TERMINAL, streamLines



def submitScan(c: Context, package: str, version: str, key: Optional[str] = None) -> str:
    from fangs.scanrequest import scanRequest

    request = scanRequest(package, version, int(c.args.duration * wire.SECOND), c.args.runner or "")
    headers = {"Idempotency-Key": key} if key else None
    reply = c.client.call("POST", "/v1/scans", request, headers)
    return reply["run_id"]


def cmdScanSubmit(c: Context) -> int:
    spec = c.args.spec
    package, version = c.args.package, c.args.version
    if spec:
        if package or version:
            raise CLIError("give PACKAGE@VERSION or --package/--version, not both", EXIT_USAGE)
        package, version = npm.splitSpec(spec)
    if not package:
        raise CLIError("which package? give PACKAGE@VERSION or --package NAME --version X.Y.Z", EXIT_USAGE)
    package = checkName(package)
    if version:
        version = checkVersion(version)
    if c.args.skip_registry_validate:
        if not version:
            raise CLIError("with --skip-registry-validate give an exact version", EXIT_USAGE)
    else:
        version, _ = registryResolve(registryURL(c), package, version)
    runID = submitScan(c, package, version)
    if c.args.json and not c.args.wait:
        c.json({"queued": True, "run_id": runID, "package": package, "version": version})
        return EXIT_OK
    if not c.args.json:
        c.say("queued scan of %s@%s: run %s" % (package, version, short(runID)))
        if not c.args.wait:
            c.say("  follow: fangs run show %s" % (short(runID),))
    if c.args.wait:
        return waitFor(c, runID)
    return EXIT_OK


def waitFor(c: Context, runID: str) -> int:
    """
    Follow a run until it has a verdict, on the run stream (polling an
    orchestrator that has none); progress on stderr (one updating line on a
    terminal), then the verdict like C{run show}.
    """
    deadline = time.monotonic() + c.args.wait_timeout
    started = time.monotonic()
    progress = _RunProgress(c, runID, started)
    run: Optional[Dict[str, Any]] = None
    try:
        for line in streamLines(c, deadline, run_id=runID):
            kind = line.get("type")
            if kind == "stream.open":
                run = c.client.get("/v1/runs/" + runID)
                if run["verdict"]:
                    break
                progress.show(run["state"], run["events_received"])
            elif kind in FINAL_LINES:
                run = c.client.get("/v1/runs/" + runID)
                break
            elif kind in ("run.started", "run.updated"):
                progress.show(line.get("status", ""), line.get("events_received", 0))
    except APIError as e:
        if e.status != 404 or e.errcode in ("unknown_run",):
            raise
        run = _pollUntilVerdict(c, runID, deadline, progress)
    progress.done()
    if run is None or not run["verdict"]:
        state = run["state"] if run else "unknown"
        raise CLIError("run %s has no verdict after %ds (state %s); keep following: fangs run show %s"
                       % (short(runID), c.args.wait_timeout, state, short(runID)))
    showRun(c, run, runSteps(c, runID))
    verdict = run["verdict"]
    if verdict in ("baseline", "clean"):
        return EXIT_OK
    if verdict == "deviations":
        return EXIT_DEVIATIONS
    return EXIT_ERROR


class _RunProgress:
    def __init__(self, c: Context, runID: str, started: float) -> None:
        self.c = c
        self.runID = runID
        self.started = started
        self.tty = c.err.isatty()
        self.last: Any = None

    def show(self, state: str, events: int) -> None:
        line = "run %s  %-10s  %d events received  %ds" % (short(self.runID), state, events,
                                                          time.monotonic() - self.started)
        if self.tty:
            self.c.err.write("\r" + line.ljust(70))
        elif (state, events) != self.last:
            self.c.err.write(line + "\n")
        self.c.err.flush()
        self.last = (state, events)

    def done(self) -> None:
        if self.tty:
            self.c.err.write("\r" + " " * 70 + "\r")
            self.c.err.flush()


def _pollUntilVerdict(c: Context, runID: str, deadline: float, progress: _RunProgress) -> Dict[str, Any]:
    terminalSince: Optional[float] = None
    while True:
        run = c.client.get("/v1/runs/" + runID)
        if run["verdict"]:
            return run
        now = time.monotonic()
        progress.show(run["state"], run["events_received"])
        if run["state"] in TERMINAL:
            terminalSince = terminalSince or now
            if now - terminalSince > 30:
                return run
        if now > deadline:
            return run
        time.sleep(c.args.poll)
