"""
The steps of a run, as C{GET /v1/runs/{id}/steps}, C{fangs run show} and the
run page show them: queued -> dispatched -> install -> observe -> analyse ->
notify, each with when it started and ended, how many attempts it took and
its outcome.

Pure logic: derived from what the store already keeps about the run (its
timestamps, the runner's result with the install's own exit and the end of
observation, the verdict) and its notifier outbox messages, so no step can
disagree with the run itself.
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence

import attrs

STEP_NAMES = ("queued", "dispatched", "install", "observe", "analyse", "notify")

#: A step's state.
DONE, RUNNING, WAITING, FAILED, SKIPPED = "done", "running", "waiting", "failed", "skipped"

_FINISHED = ("done", "failed", "timeout", "cancelled")


@attrs.frozen
class Step:
    name: str
    state: str
    started_ns: Optional[int] = None
    ended_ns: Optional[int] = None
    attempts: int = 0
    outcome: str = ""
    detail: str = ""


def _installOutcome(run: Any) -> tuple:
    code = run.install_exit_code
    if code is None:
        return "", ""
    if code == 0:
        return DONE, "npm exited 0"
    return FAILED, "npm exited %d" % (code,)


def runSteps(run: Any, outbox: Sequence[Mapping[str, Any]] = ()) -> List[Step]:
    """
    The six steps of C{run} (a L{fangs.orchestrator.store.RunRow}); C{outbox}
    are its notifier messages (C{state}, C{attempts}, C{created_ns},
    C{updated_ns}, C{last_error}).
    """
    finished = run.state in _FINISHED
    dispatched = run.dispatched_ns is not None
    cancelledEarly = run.state == "cancelled" and not dispatched
    steps: List[Step] = []

    # queued: from submission until a runner took it.
    if dispatched:
        steps.append(Step("queued", DONE, run.created_ns, run.dispatched_ns, 1, "taken by %s" % (run.runner_id or "a runner",)))
    elif cancelledEarly:
        steps.append(Step("queued", FAILED, run.created_ns, run.finished_ns, 1, "cancelled before a runner took it"))
    else:
        steps.append(Step("queued", RUNNING, run.created_ns, None, 1, "waiting for %s" % (run.target_runner or "any runner",)))

    # dispatched: the job reached the runner.
    if dispatched:
        steps.append(Step("dispatched", DONE, run.dispatched_ns, run.dispatched_ns, 1, "job delivered"))
    else:
        steps.append(Step("dispatched", SKIPPED if cancelledEarly else WAITING))

    installEnd = run.install_finished_ns
    observeEnd = run.observation_ended_ns
    installState, installOutcome = _installOutcome(run)
    if not dispatched:
        steps.append(Step("install", SKIPPED if cancelledEarly else WAITING))
        steps.append(Step("observe", SKIPPED if cancelledEarly else WAITING))
    else:
        if installEnd is not None:
            steps.append(Step("install", installState or DONE, run.dispatched_ns, installEnd, 1, installOutcome,
                              "" if installState != FAILED else run.failure_reason))
        elif finished:
            # A runner that does not report the install separately: the
            # install and its observation are one span, ended by the result.
            steps.append(Step("install", FAILED if run.state != "done" else DONE, run.dispatched_ns, run.finished_ns, 1,
                              run.result_status or run.state, run.failure_reason))
        else:
            steps.append(Step("install", RUNNING, run.dispatched_ns, None, 1, "%d events so far" % (run.events_received,)))
        if installEnd is not None:
            end = observeEnd if observeEnd is not None else (run.finished_ns if finished else None)
            outcome = (run.result_status or run.state) if finished else ""
            state = RUNNING if end is None else (DONE if run.state == "done" else FAILED)
            steps.append(Step("observe", state, installEnd, end, 1, outcome,
                              run.failure_reason if state == FAILED else ""))
        elif finished:
            steps.append(Step("observe", SKIPPED, detail="not reported separately by this runner"))
        else:
            steps.append(Step("observe", WAITING))

    # analyse: from the result to the verdict.
    if run.verdict:
        steps.append(Step("analyse", DONE, run.finished_ns, run.analyzed_ns, 1, run.verdict,
                          "%d deviations%s" % (run.deviation_count,
                                              ", max %s" % (run.max_severity,) if run.max_severity else "")))
    elif finished and not cancelledEarly:
        steps.append(Step("analyse", RUNNING, run.finished_ns, None, 1))
    else:
        steps.append(Step("analyse", SKIPPED if cancelledEarly else WAITING))

    # notify: one message per matching notifier.
    if outbox:
        attempts = sum(int(m.get("attempts") or 0) for m in outbox)
        states = sorted({m.get("state", "") for m in outbox})
        started = min(int(m.get("created_ns") or 0) for m in outbox) or None
        pending = "pending" in states
        failed = [m for m in outbox if m.get("state") == "failed"]
        ended = None if pending else max(int(m.get("updated_ns") or 0) for m in outbox) or None
        state = RUNNING if pending else (FAILED if failed else DONE)
        outcome = ", ".join("%s %s" % (m.get("notifier_name"), m.get("state")) for m in outbox)
        detail = "; ".join("%s: %s" % (m.get("notifier_name"), m.get("last_error")) for m in failed if m.get("last_error"))
        steps.append(Step("notify", state, started, ended, attempts, outcome, detail))
    elif run.verdict:
        steps.append(Step("notify", SKIPPED, detail="no notifier wanted this verdict"))
    else:
        steps.append(Step("notify", SKIPPED if cancelledEarly else WAITING))
    return steps
