"""
The command line's grammar: the global options (L{globalOptions}, accepted
before or after any command, and L{resolveGlobals}, their environment
defaults), and every command with its arguments (L{buildParser}).
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Callable, Optional, Sequence

from fangs import wire
from fangs.cli.admin import cmdStatus, cmdTokenCreate, cmdTokenList, cmdTokenRevoke
from fangs.cli.context import Context
from fangs.cli.http import EXIT_USAGE
from fangs.cli.notifiers import cmdNotifierAdd, cmdNotifierHistory, cmdNotifierList, cmdNotifierRemove, cmdNotifierTest
from fangs.cli.packages import cmdPackageAdd, cmdPackageImport, cmdPackageList, cmdPackageRemove, cmdReleaseList
from fangs.cli.registry import DEFAULT_REGISTRY
from fangs.cli.review import (
    decide,
    cmdAllowAdd,
    cmdAllowList,
    cmdAllowRemove,
    cmdBaselineShow,
    cmdDeviationList,
    cmdDeviationShow,
    cmdPending,
)
from fangs.cli.runs import cmdRunArtifact, cmdRunCancel, cmdRunEvents, cmdRunList, cmdRunShow, cmdRunWatch
from fangs.cli.scans import cmdScanSubmit


DEFAULT_ORCHESTRATOR = "http://127.0.0.1:8443"

EPILOG = """\
exit codes:
  0  success (for `scan submit --wait` and `package add --wait`: the run's
     verdict is baseline or clean)
  1  error: the orchestrator, the registry or TLS failed, a request was
     refused, an id prefix is ambiguous, or a waited-for run ended
     without a usable verdict (incomplete, rejected, cancelled)
  2  usage: bad arguments, a malformed package name, a version range
     instead of one exact version
  3  not found: unknown run, deviation, package (on the orchestrator or
     on the registry), allowlist entry, notifier
  4  a waited-for run finished with deviations (awaiting review:
     `fangs pending`)

ids: runs and deviations accept any unique prefix of their 32-hex id (as
git does); an ambiguous prefix lists the candidates.

environment: FANGS_ORCHESTRATOR (default %s), FANGS_REGISTRY_URL
(default %s), FANGS_TOKEN, FANGS_TLS_CA, FANGS_TLS_CERT, FANGS_TLS_KEY.
""" % (DEFAULT_ORCHESTRATOR, DEFAULT_REGISTRY)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, "fangs: %s (see fangs %s--help)\n" % (message, self._sub()))

    def _sub(self) -> str:
        parts = self.prog.split()[1:]
        return " ".join(parts) + " " if parts else ""


# ---------------------------------------------------------------------------
# Global options: accepted before or after any command (every parser has them
# as a parent, with SUPPRESS defaults so a later parser does not overwrite a
# value given earlier on the line); their defaults, from the environment, are
# filled in by resolveGlobals once the line is parsed.  A new global option
# goes in both functions.


def globalOptions() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--orchestrator", default=argparse.SUPPRESS, metavar="URL",
                        help="orchestrator base URL (env FANGS_ORCHESTRATOR, default %s)" % (DEFAULT_ORCHESTRATOR,))
    common.add_argument("--tls-ca", default=argparse.SUPPRESS, metavar="FILE", help="CA bundle that signed the orchestrator's certificate")
    common.add_argument("--tls-cert", default=argparse.SUPPRESS, metavar="FILE", help="client certificate (mTLS)")
    common.add_argument("--tls-key", default=argparse.SUPPRESS, metavar="FILE", help="client certificate's key (mTLS)")
    common.add_argument("--token", default=argparse.SUPPRESS, help="bearer token (env FANGS_TOKEN)")
    common.add_argument("--tenant", default=argparse.SUPPRESS, metavar="TENANT",
                        help="the tenant to act on, for a credential of several tenants (env FANGS_TENANT; sent as X-Fangs-Tenant)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="JSON output for scripts")
    return common


def resolveGlobals(args: argparse.Namespace, env: Callable[[str], Optional[str]] = os.environ.get) -> None:
    """
    Every global option on C{args}: as given, else from the environment,
    else its default.
    """
    args.orchestrator = getattr(args, "orchestrator", None) or env("FANGS_ORCHESTRATOR") or DEFAULT_ORCHESTRATOR
    args.tls_ca = getattr(args, "tls_ca", None) or env("FANGS_TLS_CA")
    args.tls_cert = getattr(args, "tls_cert", None) or env("FANGS_TLS_CERT")
    args.tls_key = getattr(args, "tls_key", None) or env("FANGS_TLS_KEY")
    args.token = getattr(args, "token", None) or env("FANGS_TOKEN")
    args.tenant = getattr(args, "tenant", None) or env("FANGS_TENANT") or None
    args.json = getattr(args, "json", False)


# ---------------------------------------------------------------------------
# Commands


def buildParser() -> argparse.ArgumentParser:
    common = globalOptions()
    p = _Parser(prog="fangs", description="Operate a FANGS orchestrator: watched packages, scans, runs, review.",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter, parents=[common])
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def cmd(parent: Any, name: str, fn: Callable[[Context], int], help: str, aliases: Sequence[str] = ()) -> argparse.ArgumentParser:
        sp = parent.add_parser(name, help=help, description=help, parents=[common], aliases=list(aliases))
        sp.set_defaults(fn=fn)
        return sp

    def group(name: str, help: str) -> Any:
        g = sub.add_parser(name, help=help, description=help, parents=[common])
        g.set_defaults(fn=None, group=g)
        return g.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", parser_class=_Parser)

    def scanOptions(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--runner", help="send the scan to this runner (default: the shared queue, any runner)")
        sp.add_argument("--duration", type=float, default=120.0, help="seconds the sandbox runs (default 120)")
        sp.add_argument("--registry-url", help="npm registry for the pre-flight (env FANGS_REGISTRY_URL)")
        sp.add_argument("--skip-registry-validate", action="store_true", help="do not check the registry first")
        sp.add_argument("--wait-timeout", type=float, default=900.0, help="seconds --wait follows the run (default 900)")
        sp.add_argument("--poll", type=float, default=1.0, help=argparse.SUPPRESS)

    cmd(sub, "status", cmdStatus, "orchestrator health, runners and queue depth")

    g = group("package", "watched packages")
    sp = cmd(g, "add", cmdPackageAdd, "watch a package and scan its latest version (the first run becomes its baseline)")
    sp.add_argument("name")
    sp.add_argument("--version", help="kickoff scan of this exact version instead of latest")
    sp.add_argument("--skip-initial-scan", action="store_true")
    sp.add_argument("--wait", action="store_true", help="follow the kickoff run until its verdict")
    scanOptions(sp)
    sp = cmd(g, "import", cmdPackageImport,
             "watch every package a package-lock.json, npm-shrinkwrap.json or package.json names (transitive ones too)")
    sp.add_argument("file", help="package-lock.json, npm-shrinkwrap.json or package.json")
    sp.add_argument("--dry-run", action="store_true", help="say what would be watched, change nothing")
    sp.add_argument("--show", type=int, default=20, help=argparse.SUPPRESS)
    cmd(g, "list", cmdPackageList, "watched packages", aliases=["ls"])
    sp = cmd(g, "remove", cmdPackageRemove, "stop watching a package (runs and baseline are kept)", aliases=["rm"])
    sp.add_argument("name")

    g = group("release", "versions the watcher recorded")
    sp = cmd(g, "list", cmdReleaseList, "a package's recorded releases, newest first", aliases=["ls"])
    sp.add_argument("package")
    sp.add_argument("--limit", type=int, default=50)

    g = group("scan", "scans")
    sp = cmd(g, "submit", cmdScanSubmit, "queue a sandbox scan of PACKAGE@VERSION (exact version; latest when omitted)")
    sp.add_argument("spec", nargs="?", help="PACKAGE@VERSION")
    sp.add_argument("--package")
    sp.add_argument("--version")
    sp.add_argument("--wait", action="store_true", help="follow the run until its verdict (exit 0 clean/baseline, 4 deviations)")
    scanOptions(sp)

    g = group("run", "runs")
    sp = cmd(g, "list", cmdRunList, "runs, newest first", aliases=["ls"])
    sp.add_argument("--package")
    sp.add_argument("--state", choices=["pending", "leased", "dispatched", "running", "done", "failed", "timeout", "cancelled"])
    sp.add_argument("--limit", type=int, default=50)
    for name, fn, help in (
        ("show", cmdRunShow, "one run: state, verdict, event counts, deviations"),
        ("cancel", cmdRunCancel, "withdraw a queued run or stop a running one"),
        ("reject", lambda c: decide(c, "reject"), "reject a run: its behaviour never enters the baseline"),
    ):
        cmd(g, name, fn, help).add_argument("id", help="run id or unique prefix")
    sp = cmd(g, "artifact", cmdRunArtifact, "save the tarball a run scanned (checked against its SHA-512)")
    sp.add_argument("id", help="run id or unique prefix")
    sp.add_argument("-o", "--output", help="file to write (default PACKAGE-VERSION.tgz; - for stdout)")
    sp = cmd(g, "watch", cmdRunWatch, "follow runs live: queued, started, updated, completed, failed, cancelled")
    sp.add_argument("--package", help="only this package's runs")
    sp.add_argument("--state", help="only lines of this run state or type (e.g. done, run.completed)")
    sp.add_argument("--run", help="only this run (id or unique prefix)")
    sp.add_argument("--since", help="first send every line after this cursor (from an earlier --json line)")
    sp.add_argument("--count", type=int, default=0, help="stop after this many run lines")
    sp.add_argument("--until-final", action="store_true",
                    help="stop at the first run.completed, run.failed or run.cancelled line")
    sp = cmd(g, "events", cmdRunEvents, "a run's events (NDJSON with --json)")
    sp.add_argument("id", help="run id or unique prefix")
    sp.add_argument("--type", choices=sorted(wire.EVENT_TYPE_IDS))

    sp = cmd(sub, "pending", cmdPending, "runs with deviations awaiting review")
    sp.add_argument("--limit", type=int, default=None)

    g = group("deviation", "deviations from baselines")
    sp = cmd(g, "list", cmdDeviationList, "deviations, newest first", aliases=["ls"])
    sp.add_argument("--package")
    sp.add_argument("--severity", choices=["low", "medium", "high", "critical"], help="at least this severity")
    sp.add_argument("--run", help="run id or unique prefix")
    sp.add_argument("--limit", type=int, default=50)
    cmd(g, "show", cmdDeviationShow, "one deviation with its evidence event").add_argument("id", help="deviation id or unique prefix")

    g = group("baseline", "package baselines")
    cmd(g, "show", cmdBaselineShow, "a package's baseline fingerprints").add_argument("package")
    cmd(g, "promote", lambda c: decide(c, "promote"), "accept a run's behaviour into its package's baseline").add_argument(
        "id", help="run id or unique prefix")

    g = group("allow", "allowlist")
    sp = cmd(g, "add", cmdAllowAdd, "allow a network peer, host name or path (globally or for one package)")
    sp.add_argument("--kind", required=True, choices=["cidr", "sni", "dns", "path", "exec"])
    sp.add_argument("--value", required=True)
    sp.add_argument("--package")
    sp.add_argument("--note")
    sp = cmd(g, "list", cmdAllowList, "allowlist entries", aliases=["ls"])
    sp.add_argument("--package", help="global entries and this package's")
    cmd(g, "remove", cmdAllowRemove, "remove an entry", aliases=["rm"]).add_argument("id", help="entry id or unique prefix")

    g = group("notifier", "webhook notifiers")
    sp = cmd(g, "add", cmdNotifierAdd, "add or update a notifier")
    sp.add_argument("--name", required=True)
    sp.add_argument("--url", required=True)
    sp.add_argument("--template", default="generic", choices=["generic", "siem", "slack", "discord"])
    sp.add_argument("--disabled", action="store_true", help="save it paused (messages wait)")
    sp.add_argument("--secret-env", help="environment variable holding the HMAC secret (on the orchestrator)")
    sp.add_argument("--min-severity", choices=["low", "medium", "high", "critical"])
    sp.add_argument("--header", action="append", metavar="NAME=VALUE")
    sp.add_argument("--package", action="append", help="only for this package (repeatable)")
    cmd(g, "list", cmdNotifierList, "notifiers", aliases=["ls"])
    cmd(g, "remove", cmdNotifierRemove, "remove a notifier", aliases=["rm"]).add_argument("name")
    cmd(g, "test", cmdNotifierTest, "send a test notification").add_argument("name")
    cmd(g, "history", cmdNotifierHistory, "delivery attempts of a notifier").add_argument("name")

    g = group("token", "API tokens (admin scope)")
    sp = cmd(g, "create", cmdTokenCreate, "create a bearer token; the secret is printed once")
    sp.add_argument("--name", required=True, help="who or what uses it (for a runner token: the runner id)")
    sp.add_argument("--scope", action="append", required=True,
                    choices=["orchestrator:read", "orchestrator:write", "orchestrator:admin", "runner"])
    sp.add_argument("--token-tenant", "--for-tenant", dest="token_tenant", metavar="TENANT",
                    help="the new token's tenant (* for all tenants); default: the tenant this command acts on"
                         " (`fangs --tenant T token create` makes a token of T)")
    cmd(g, "list", cmdTokenList, "tokens (never their secrets)", aliases=["ls"])
    cmd(g, "revoke", cmdTokenRevoke, "revoke a token").add_argument("id", help="token id or unique prefix")

    sub.add_parser("pki", help="a small PKI: CA, server, runner and operator certificates, CRL (fangs pki --help)", add_help=False)
    return p
