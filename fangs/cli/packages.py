"""
C{fangs package ...} and C{fangs release list}: watched packages, lockfile
import, the releases the watcher recorded.
"""

from __future__ import annotations

import urllib.parse
from typing import Any, Dict, List

from fangs.cli.context import Context, checkName, checkVersion
from fangs.cli.http import EXIT_OK, EXIT_USAGE, CLIError
from fangs.cli.registry import registryURL, registryResolve
from fangs.cli.render import Progress, ago, fmtTime, short, table
from fangs.cli.scans import submitScan, waitFor



def cmdPackageAdd(c: Context) -> int:
    from fangs.scanrequest import idempotencyKey

    name = checkName(c.args.name)
    version = checkVersion(c.args.version) if c.args.version else ""
    if c.args.skip_registry_validate:
        if not version and not c.args.skip_initial_scan:
            raise CLIError("with --skip-registry-validate give --version (or --skip-initial-scan)", EXIT_USAGE)
    else:
        version, _ = registryResolve(registryURL(c), name, version)
    body = c.client.call("POST", "/v1/packages", {"name": name})
    runID = None
    if not c.args.skip_initial_scan:
        # The watcher's own key: its first poll will find this run, not queue another.
        runID = submitScan(c, name, version, idempotencyKey(name, version))
    if c.args.json:
        c.json({"package": name, "added": body.get("added", False), "version": version or None, "kickoff_run_id": runID})
    else:
        c.say(('added "%s" to watched packages' if body.get("added") else '"%s" was already watched') % (name,)
              + (" (latest: %s)" % (version,) if version else ""))
        if runID:
            c.say("kickoff scan of %s@%s queued: run %s" % (name, version, short(runID)))
            if not c.args.wait:
                c.say("  follow: fangs run show %s" % (short(runID),))
    if runID and c.args.wait:
        return waitFor(c, runID)
    return EXIT_OK


def cmdPackageImport(c: Context) -> int:
    from fangs import lockfile

    try:
        deps = lockfile.read(c.args.file)
    except lockfile.LockfileError as e:
        raise CLIError(str(e), EXIT_USAGE) from None
    watched = {p["name"] for p in c.client.get("/v1/packages")["packages"]}
    todo = [n for n in deps.names if n not in watched]
    added: List[str] = []
    progress = Progress(c.err, len(todo), "packages watched") if not c.args.json else None
    for i, name in enumerate(todo, 1):
        if not c.args.dry_run:
            body = c.client.call("POST", "/v1/packages", {"name": name})
            if body.get("added", True):
                added.append(name)
        else:
            added.append(name)
        if progress:
            progress.update(i, name)
    already = sorted(set(deps.names) - set(todo))
    if c.args.json:
        c.json({"file": c.args.file, "kind": deps.kind, "packages": len(deps.names), "added": added,
                "already_watched": already, "skipped": [{"entry": w, "reason": r} for w, r in deps.skipped],
                "dry_run": bool(c.args.dry_run)})
        return EXIT_OK
    verb = "would watch" if c.args.dry_run else "now watching"
    c.say("%s: %d registry packages (%s); %s %d new, %d already watched, %d entries skipped"
          % (c.args.file, len(deps.names), "transitive included" if deps.kind != "package.json" else "direct only",
             verb, len(added), len(already), len(deps.skipped)))
    for name in added[:c.args.show]:
        c.say("  + " + name)
    if len(added) > c.args.show:
        c.say("  ... and %d more (--json lists all)" % (len(added) - c.args.show,))
    for what, why in deps.skipped:
        c.say("  skipped %s: %s" % (what, why))
    if added and not c.args.dry_run:
        c.say("the watcher scans each one's latest release on its next poll (its first run becomes the baseline)")
    return EXIT_OK


def cmdPackageList(c: Context) -> int:
    packages = c.client.get("/v1/packages")["packages"]
    if c.args.json:
        c.json(packages)
        return EXIT_OK
    table(
        c.out,
        ["PACKAGE", "LAST_SEEN", "LAST_CHECKED", "RUNS", "BASELINE_RUNS", "PENDING", "FINGERPRINTS"],
        [
            (p["name"], p["last_seen_version"] or "-", ago(p["last_checked_at"]), p["runs"], p["baseline_runs"],
             p["pending_runs"], p["baseline_fingerprints"])
            for p in packages
        ],
        empty="no watched packages (add one: fangs package add NAME)",
    )
    return EXIT_OK


def cmdPackageRemove(c: Context) -> int:
    name = checkName(c.args.name)
    body = c.client.call("DELETE", "/v1/packages/" + urllib.parse.quote(name, safe="@/"))
    if c.args.json:
        c.json(body)
    else:
        c.say('removed "%s" from watched packages (its runs and baseline are kept)' % (name,))
    return EXIT_OK


def cmdReleaseList(c: Context) -> int:
    name = checkName(c.args.package)
    body = c.client.get("/v1/packages/%s/releases" % (urllib.parse.quote(name, safe="@/"),), limit=c.args.limit)
    if c.args.json:
        c.json(body)
        return EXIT_OK

    def state(r: Dict[str, Any]) -> str:
        if r["queued"]:
            return "queued"
        if r["seeded"]:
            return "seen at seeding"
        return "waiting (%d failed)" % (r["attempts"],) if r["attempts"] else "waiting"

    table(
        c.out,
        ["VERSION", "TAGS", "PUBLISHED", "DISCOVERED", "STATE", "RUN", "SHASUM"],
        [
            (r["version"], ",".join(r["dist_tags"]) or "-", fmtTime(r["published_at"]), fmtTime(r["discovered_at"]),
             state(r), short(r["run_id"]) if r["run_id"] else "-", (r["shasum"] or "-")[:16])
            for r in body["releases"]
        ],
        empty="no releases recorded yet (the watcher records them on its next poll)",
    )
    if body.get("last_error"):
        c.say("last check failed: %s" % (body["last_error"],))
    return EXIT_OK
