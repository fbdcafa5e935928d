"""
Review: C{fangs pending}, deviations, baselines (show, promote; run reject)
and the allowlist.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any, Dict

from fangs.cli.context import Context, checkName, pickByPrefix
from fangs.cli.http import EXIT_OK
from fangs.cli.render import SHORT, ago, fmtTime, short, table, trunc



def decide(c: Context, what: str) -> int:
    runID = c.resolve(c.args.id, "run")
    run = c.client.call("POST", "/v1/runs/%s/%s" % (runID, what))
    if c.args.json:
        c.json(run)
    elif what == "promote":
        c.say("promoted run %s (%s@%s) into the baseline; verdict now %s" % (short(runID), run["package_name"], run["version"], run["verdict"]))
    else:
        c.say("rejected run %s (%s@%s); its behaviour stays out of the baseline" % (short(runID), run["package_name"], run["version"]))
    return EXIT_OK


def cmdPending(c: Context) -> int:
    runs = c.client.pages("/v1/pending", "runs", limit=c.args.limit)
    if c.args.json:
        c.json(runs)
        return EXIT_OK
    table(
        c.out,
        ["SEVERITY", "RUN", "PACKAGE", "VERSION", "DEVS", "FINISHED", "PROMOTE"],
        [
            (r["max_severity"] or "-", short(r["run_id"]), trunc(r["package_name"], 28), r["version"],
             r["deviation_count"], ago(r["finished_at"]), "fangs baseline promote %s" % (short(r["run_id"]),))
            for r in runs
        ],
        empty="no runs awaiting review.",
    )
    if runs:
        c.say("%d run(s) awaiting review." % (len(runs),))
    return EXIT_OK


def cmdDeviationList(c: Context) -> int:
    run = c.resolve(c.args.run, "run") if c.args.run else None
    devs = c.client.pages("/v1/deviations", "deviations", limit=c.args.limit, package=c.args.package,
                          severity=c.args.severity, run=run)
    if c.args.json:
        c.json(devs)
        return EXIT_OK
    table(
        c.out,
        ["DEV_ID", "DETECTED", "SEVERITY", "CATEGORY", "VALUE", "RUN_ID"],
        [(d["id"][:SHORT], fmtTime(d["detected_at"]), d["severity"], d["category"], trunc(d["value"], 60), short(d["run_id"]))
         for d in devs],
    )
    return EXIT_OK


def cmdDeviationShow(c: Context) -> int:
    d = c.client.get("/v1/deviations/" + c.resolve(c.args.id, "deviation"))
    if c.args.json:
        c.json(d)
        return EXIT_OK
    c.say("deviation   %s" % (d["id"],))
    c.say("run         %s (%s)" % (d["run_id"], d["package_name"]))
    c.say("category    %s" % (d["category"],))
    c.say("value       %s" % (d["value"],))
    c.say("severity    %s" % (d["severity"],))
    c.say("reason      %s" % (d["reason"],))
    detail = d.get("actor_detail") or {}
    if d.get("actor"):
        c.say("actor       %s" % (d["actor"],))
    if detail.get("pid"):
        c.say("process     pid %s: %s" % (detail["pid"], " ".join(detail.get("argv") or [])[:200]))
    c.say("detected    %s (seen %d time(s))" % (fmtTime(d["detected_at"]), d["count"]))
    ev = d.get("evidence_event")
    if ev:
        c.say("evidence    event #%d (%s)" % (ev["id"], ev["type_name"]))
        c.say(json.dumps(ev["payload"], indent=2))
    return EXIT_OK


def cmdBaselineShow(c: Context) -> int:
    name = checkName(c.args.package)
    body = c.client.get("/v1/packages/%s/baseline" % (urllib.parse.quote(name, safe="@/"),))
    if c.args.json:
        c.json(body)
        return EXIT_OK
    table(
        c.out,
        ["CATEGORY", "VALUE", "ACTOR", "RUNS", "EVENTS", "FIRST_RUN", "LAST_RUN"],
        [(f["category"], trunc(f["value"], 60), f.get("actor") or "-", f["occurrences"], f["events"],
          short(f["first_seen_run_id"]), short(f["last_seen_run_id"]))
         for f in body["fingerprints"]],
        empty="no baseline yet for %s (the first complete run becomes it)" % (name,),
    )
    return EXIT_OK


def cmdAllowAdd(c: Context) -> int:
    body: Dict[str, Any] = {"kind": c.args.kind, "value": c.args.value, "note": c.args.note or ""}
    if c.args.package:
        body["package_name"] = checkName(c.args.package)
    entry = c.client.call("POST", "/v1/allow", body)
    if c.args.json:
        c.json(entry)
    else:
        c.say("added %s %s allowlist entry %s: %s" % (entry["package_name"] or "global", entry["kind"], entry["id"], entry["value"]))
    return EXIT_OK


def cmdAllowList(c: Context) -> int:
    entries = c.client.get("/v1/allow", package=c.args.package)["entries"]
    if c.args.json:
        c.json(entries)
        return EXIT_OK
    table(
        c.out,
        ["ID", "SCOPE", "PACKAGE", "KIND", "VALUE", "SOURCE", "NOTE"],
        [(e["id"], e["scope"], e["package_name"] or "-", e["kind"], trunc(e["value"], 40), e["source"], trunc(e["note"], 30) or "-")
         for e in entries],
        empty="no allowlist entries (add one: fangs allow add --kind sni --value cdn.example.com [--package P])",
    )
    return EXIT_OK


def cmdAllowRemove(c: Context) -> int:
    entries = c.client.get("/v1/allow")["entries"]
    entryID = pickByPrefix([e["id"] for e in entries], c.args.id, "allowlist entry", "fangs allow list")
    body = c.client.call("DELETE", "/v1/allow/" + urllib.parse.quote(entryID))
    if c.args.json:
        c.json(body)
    else:
        c.say("removed allowlist entry %s" % (entryID,))
    return EXIT_OK
