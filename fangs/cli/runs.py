"""
C{fangs run ...}: list, show (steps, deviations, egress), events, artifact,
cancel and the live C{run watch}.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from typing import Any, Dict, List, Optional

from fangs.cli.context import Context, checkName
from fangs.cli.http import EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, APIError, CLIError
from fangs.cli.render import SHORT, fmtTime, short, table, trunc
from fangs.cli.stream import FINAL_LINES, TERMINAL, streamLines



def _watchLine(line: Dict[str, Any]) -> str:
    when = (line.get("timestamp") or "")[11:19]
    what = "%s@%s" % (line.get("package") or "?", line.get("version") or "?")
    text = "%s  %-14s %-28s run %s  %s" % (when, line["type"], trunc(what, 28), short(line.get("run_id")),
                                           line.get("status") or "")
    if line.get("verdict"):
        text += "  verdict %s" % (line["verdict"],)
        if line.get("deviations"):
            text += " (%d deviations, max %s)" % (line["deviations"], line.get("max_severity") or "-")
    elif line.get("events_received"):
        text += "  %d events" % (line["events_received"],)
    if line.get("reason"):
        text += "  (%s)" % (trunc(line["reason"], 60),)
    return text


def cmdRunWatch(c: Context) -> int:
    """
    Follow the run stream: one line per run event, until interrupted.
    """
    runID = c.resolve(c.args.run, "run") if c.args.run else None
    if c.args.since and not c.args.since.isdigit():
        raise CLIError("--since must be a cursor printed by an earlier stream line", EXIT_USAGE)
    if c.args.package:
        checkName(c.args.package)
    seen = 0
    try:
        for line in streamLines(c, package=c.args.package, state=c.args.state, run_id=runID, since=c.args.since):
            kind = line.get("type", "")
            if kind == "stream.keepalive":
                continue
            if c.args.json:
                c.out.write(json.dumps(line, sort_keys=True) + "\n")
            elif kind == "stream.open":
                c.err.write("following the run stream from cursor %s (Ctrl-C to stop)\n" % (line.get("cursor"),))
            elif kind == "stream.gap":
                c.err.write("fangs: %s\n" % (line.get("reason"),))
            elif kind.startswith("run."):
                c.out.write(_watchLine(line) + "\n")
            c.out.flush()
            if kind.startswith("run."):
                seen += 1
                if c.args.count and seen >= c.args.count:
                    break
            if c.args.until_final and kind in FINAL_LINES:
                break
    except KeyboardInterrupt:
        pass
    except APIError as e:
        if e.status == 404 and e.errcode != "unknown_run":
            raise CLIError("this orchestrator has no run stream (upgrade it)") from None
        raise
    return EXIT_OK


def cmdRunList(c: Context) -> int:
    runs = c.client.pages("/v1/runs", "runs", limit=c.args.limit, package=c.args.package, state=c.args.state)
    if c.args.json:
        c.json(runs)
        return EXIT_OK
    table(
        c.out,
        ["RUN_ID", "PACKAGE", "VERSION", "STATE", "VERDICT", "DEVS", "CREATED"],
        [
            (short(r["run_id"]), trunc(r["package_name"], 28), r["version"] or "-", r["state"], r["verdict"] or "-",
             r["deviation_count"], fmtTime(r["created_at"]))
            for r in runs
        ],
    )
    return EXIT_OK


def runSteps(c: Context, runID: str) -> Optional[List[Dict[str, Any]]]:
    try:
        return c.client.get("/v1/runs/%s/steps" % (runID,))["steps"]
    except APIError as e:
        if e.status in (400, 404) and e.errcode != "unknown_run":
            return None  # an orchestrator without steps
        raise


def _span(step: Dict[str, Any]) -> str:
    start, end = step.get("started_at"), step.get("ended_at")
    if not start:
        return "-"
    if not end:
        return "since " + fmtTime(start)
    try:
        a = datetime.datetime.fromisoformat(start.replace("Z", "+00:00"))
        b = datetime.datetime.fromisoformat(end.replace("Z", "+00:00"))
        return "%.1fs" % ((b - a).total_seconds(),)
    except ValueError:
        return "-"


def showRun(c: Context, run: Dict[str, Any], steps: Optional[List[Dict[str, Any]]] = None) -> None:
    if c.args.json:
        c.json(dict(run, steps=steps) if steps is not None else run)
        return
    c.say("run         %s" % (run["run_id"],))
    c.say("package     %s@%s" % (run["package_name"], run["version"]))
    c.say("state       %s%s" % (run["state"], " (cancel requested)" if run["cancel_requested"] else ""))
    c.say("verdict     %s%s" % (run["verdict"] or "(not analysed yet)", " — decision: %s" % run["decision"] if run.get("decision") else ""))
    c.say("runner      %s" % (run["runner_id"] or run["target_runner"] or "(shared queue)",))
    c.say("created     %s" % (fmtTime(run["created_at"]),))
    c.say("finished    %s" % (fmtTime(run["finished_at"]),))
    if run.get("failure_reason"):
        c.say("failure     %s" % (run["failure_reason"],))
    counts = run.get("event_counts") or {}
    summary = ", ".join("%s %d" % (k, v) for k, v in counts.items()) or "none"
    c.say("events      %d received (%s); %d emitted, %d dropped by the sensor"
          % (run["events_received"], summary, run["events_emitted"], run["events_dropped"]))
    if steps:
        c.say("")
        table(c.out, ["STEP", "STATE", "TOOK", "ATTEMPTS", "OUTCOME"],
              [(st["name"], st["state"], _span(st), st["attempts"] or "-",
                trunc(st["outcome"] + (" — " + st["detail"] if st.get("detail") else ""), 70)) for st in steps])
        c.say("")
    devs = run.get("deviations") or []
    if run.get("analysis_reason"):
        c.say("analysis    %s" % (run["analysis_reason"],))
    c.say("deviations  %d%s" % (len(devs), " (max severity %s)" % run["max_severity"] if run.get("max_severity") else ""))
    deltas = [d for d in devs if d.get("actor") == "registry"]
    if deltas:
        c.say("manifest    %d change(s) in the registry's manifest" % (len(deltas),))
    if devs:
        c.say("")
        table(c.out, ["DEV_ID", "SEVERITY", "CATEGORY", "VALUE", "ACTOR"],
              [(d["id"][:SHORT], d["severity"], d["category"], trunc(d["value"], 60), _actorCell(d)) for d in devs])
    notes = run.get("notes") or []
    if notes:
        c.say("")
        c.say("notes       %d low finding(s) (they do not wait for review)" % (len(notes),))
        table(c.out, ["SEVERITY", "CATEGORY", "VALUE", "ACTOR"],
              [(d["severity"], d["category"], trunc(d["value"], 60), _actorCell(d)) for d in notes])
    if devs and run["verdict"] == "deviations" and not run.get("decision"):
        c.say("")
        c.say("review: fangs baseline promote %s   |   fangs run reject %s" % (short(run["run_id"]), short(run["run_id"])))


def _actorCell(d: Dict[str, Any]) -> str:
    """
    The actor of a deviation: its label, and the pid of the process that
    defines it (an install script's shell).
    """
    detail = d.get("actor_detail") or {}
    label = d.get("actor") or "-"
    if detail.get("pid"):
        label += " pid %s" % (detail["pid"],)
    return trunc(label, 60)


def cmdRunArtifact(c: Context) -> int:
    """
    Save the tarball a run scanned, checked against its SHA-512.
    """
    import hashlib

    runID = c.resolve(c.args.id, "run")
    run = c.client.get("/v1/runs/" + runID)
    art = run.get("artifact")
    if not art:
        raise CLIError("run %s has no tarball record (scanned before artifacts were kept, or not a registry release)"
                       % (short(runID),), EXIT_NOT_FOUND)
    if not art.get("url"):
        raise CLIError("run %s has no stored tarball: %s (%s)" % (short(runID), art["status"], art.get("detail") or "-"),
                       EXIT_NOT_FOUND)
    data = c.client.raw(art["url"])
    if hashlib.sha512(data).hexdigest() != art["sha512"]:
        raise CLIError("the orchestrator sent %d bytes whose SHA-512 is not the artifact's %s..." % (len(data), art["sha512"][:16]))
    out = c.args.output
    if out == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return EXIT_OK
    if not out:
        out = "%s-%s.tgz" % (run["package_name"].replace("@", "").replace("/", "-"), run["version"])
    tmp = out + ".part"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, out)
    except OSError as e:
        raise CLIError("cannot write %s: %s" % (out, e.strerror or e)) from None
    if c.args.json:
        c.json({"file": out, "size": len(data), "sha512": art["sha512"], "status": art["status"], "detail": art["detail"]})
    else:
        c.say("wrote %s (%d bytes, sha512 %s...): %s, %s" % (out, len(data), art["sha512"][:16], art["status"], art["detail"]))
    return EXIT_OK


def cmdRunShow(c: Context) -> int:
    runID = c.resolve(c.args.id, "run")
    run = c.client.get("/v1/runs/" + runID)
    showRun(c, run, runSteps(c, runID))
    if not c.args.json:
        showEgress(c, run["run_id"])
    return EXIT_OK


def showEgress(c: Context, runID: str) -> None:
    """
    The run's egress attempts, one line each ("tried POST http://... with
    2.1 KiB containing the bait npm token (sinkholed)"), repeats counted.
    """
    from fangs.egresstext import LIST_LIMIT, summarise

    payloads = [json.loads(line).get("payload") or {}
                for line in c.client.lines("/v1/runs/%s/events?type=egress_attempt" % (runID,)) if line.strip()]
    stopped = [p for p in payloads if p.get("Action") != "forwarded"]
    lines = summarise(stopped)
    if not lines:
        return
    c.say("")
    c.say("egress      %d attempt(s) stopped by the gateway" % (len(stopped),))
    for text in lines[:LIST_LIMIT]:
        c.say("  " + text)
    if len(lines) > LIST_LIMIT:
        c.say("  ... and %d more: fangs run events %s --type egress_attempt" % (len(lines) - LIST_LIMIT, short(runID)))


def _eventSummary(e: Dict[str, Any]) -> str:
    p = e.get("payload") or {}
    if e.get("type_name") == "egress_attempt":
        from fangs.egresstext import describeAttempt

        return describeAttempt(p)
    for key in ("PathName", "BinaryPathStr", "QName", "SNI"):
        if p.get(key):
            return str(p[key])
    if p.get("DestIP"):
        return "%s:%s" % (p["DestIP"], p.get("DestPort", ""))
    return ""


def cmdRunEvents(c: Context) -> int:
    runID = c.resolve(c.args.id, "run")
    path = "/v1/runs/%s/events" % (runID,) + ("?type=" + c.args.type if c.args.type else "")
    rows = []
    for line in c.client.lines(path):
        if c.args.json:
            c.out.write(line.decode("utf-8"))
            continue
        e = json.loads(line)
        rows.append(("%d.%d" % (e["seq"], e["idx"]), e["type_name"], (e["payload"].get("CommStr") or "-"),
                     trunc(_eventSummary(e), 100)))
    if not c.args.json:
        table(c.out, ["SEQ", "TYPE", "COMM", "SUMMARY"], rows, empty="no events")
    return EXIT_OK


def cmdRunCancel(c: Context) -> int:
    runID = c.resolve(c.args.id, "run")
    body = c.client.call("POST", "/v1/runs/%s/cancel" % (runID,))
    if c.args.json:
        c.json(body)
    else:
        c.say("run %s: %s%s" % (short(runID), body["state"], " (the runner will stop it)" if body["cancel_requested"] and body["state"] not in TERMINAL else ""))
    return EXIT_OK
