"""
C{fangs}: the operator's command line, a client of the orchestrator's /v1 API.

It never touches the database; everything goes over HTTP(S) with the same
wire types the runners use.  Plain blocking I/O (urllib) is the right tool for
a command that makes a handful of requests and exits.
"""

from __future__ import annotations

import argparse
import datetime
import errno
import json
import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from fangs import npm, wire

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_DEVIATIONS = 4

DEFAULT_ORCHESTRATOR = "http://127.0.0.1:8443"
DEFAULT_REGISTRY = "https://registry.npmjs.org"
SHORT = 12

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


class CLIError(Exception):
    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class APIError(CLIError):
    def __init__(self, status: int, errcode: str, message: str) -> None:
        super().__init__(message, EXIT_NOT_FOUND if status == 404 else EXIT_ERROR)
        self.status = status
        self.errcode = errcode


# ---------------------------------------------------------------------------
# HTTP


def _sslContext(args: argparse.Namespace) -> Optional[ssl.SSLContext]:
    if not (args.tls_ca or args.tls_cert or args.tls_key):
        return None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise CLIError("--tls-cert and --tls-key go together (the client certificate and its key)", EXIT_USAGE)
    try:
        ctx = ssl.create_default_context(cafile=args.tls_ca or None)
        if args.tls_cert:
            ctx.load_cert_chain(args.tls_cert, args.tls_key)
    except FileNotFoundError as e:
        raise CLIError("TLS file not found: %s (check --tls-ca/--tls-cert/--tls-key)" % (e.filename,), EXIT_USAGE)
    except (ssl.SSLError, OSError) as e:
        raise CLIError("cannot load TLS files: %s (check --tls-ca/--tls-cert/--tls-key)" % (e,), EXIT_USAGE)
    return ctx


def _netProblem(url: str, e: BaseException, what: str) -> CLIError:
    """
    One line naming the problem and the fix, for a failure to talk to
    C{url}.
    """
    reason = getattr(e, "reason", e)
    if isinstance(reason, ssl.SSLCertVerificationError):
        return CLIError(
            "TLS: cannot verify the certificate of %s at %s (%s); pass the CA that signed it with --tls-ca FILE"
            % (what, url, reason.verify_message or reason)
        )
    if isinstance(reason, ssl.SSLError):
        return CLIError(
            "TLS handshake with %s at %s failed (%s); check the URL scheme and --tls-ca/--tls-cert/--tls-key"
            % (what, url, reason.reason or reason)
        )
    if isinstance(reason, ConnectionRefusedError) or getattr(reason, "errno", None) == errno.ECONNREFUSED:
        hint = (
            " (is `twistd fangs-orchestrator` running? set --orchestrator)"
            if what == "the orchestrator"
            else " (check --registry-url, or use --skip-registry-validate)"
        )
        return CLIError("cannot reach %s at %s: connection refused%s" % (what, url, hint))
    if isinstance(reason, socket.gaierror):
        return CLIError("cannot reach %s at %s: unknown host (check the URL)" % (what, url))
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return CLIError("cannot reach %s at %s: no answer in time" % (what, url))
    return CLIError("cannot reach %s at %s: %s" % (what, url, reason))


class Client:
    """
    The orchestrator's API, blocking.
    """

    def __init__(self, base: str, context: Optional[ssl.SSLContext], token: Optional[str], timeout: float = 30.0,
                 tenant: Optional[str] = None) -> None:
        parsed = urllib.parse.urlparse(base)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise CLIError("--orchestrator must be an http:// or https:// URL (got %r)" % (base,), EXIT_USAGE)
        self.base = base.rstrip("/")
        self.context = context
        self.token = token
        self.timeout = timeout
        #: Sent as X-Fangs-Tenant (--tenant, FANGS_TENANT): the tenant an
        #: admin of several acts on.
        self.tenant = tenant

    def _open(self, method: str, path: str, body: Any = None, headers: Optional[Dict[str, str]] = None) -> Any:
        data = None if body is None else wire.dumps(body)
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None or method not in ("GET", "HEAD"):
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", "Bearer " + self.token)
        if self.tenant:
            req.add_header("X-Fangs-Tenant", self.tenant)
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            return urllib.request.urlopen(req, timeout=self.timeout, context=self.context)
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                err = json.loads(raw)["error"]
                raise APIError(e.code, err.get("code", ""), err.get("message", "")) from None
            except (ValueError, KeyError, TypeError):
                text = raw[:200].decode("utf-8", "replace").strip() or e.reason
                raise APIError(e.code, "http_%d" % (e.code,), "%s %s answered %d: %s" % (method, path, e.code, text)) from None
        except (urllib.error.URLError, OSError, ssl.SSLError) as e:
            raise _netProblem(self.base, e, "the orchestrator") from None

    def call(self, method: str, path: str, body: Any = None, headers: Optional[Dict[str, str]] = None) -> Any:
        with self._open(method, path, body, headers) as r:
            content = r.read()
        return json.loads(content) if content.strip() else None

    def raw(self, path: str) -> bytes:
        with self._open("GET", path) as r:
            return r.read()

    def lines(self, path: str) -> Iterator[bytes]:
        with self._open("GET", path) as r:
            for line in r:
                yield line

    def get(self, path: str, **query: Any) -> Any:
        q = {k: v for k, v in query.items() if v is not None}
        return self.call("GET", path + ("?" + urllib.parse.urlencode(q) if q else ""))

    def pages(self, path: str, key: str, limit: Optional[int] = None, **query: Any) -> List[Any]:
        out: List[Any] = []
        token = None
        while True:
            size = 500 if limit is None else max(1, min(500, limit - len(out)))
            body = self.get(path, page_size=size, page_token=token, **query)
            out.extend(body[key])
            token = body.get("next_page_token")
            if not token or (limit is not None and len(out) >= limit):
                return out[:limit] if limit is not None else out


# ---------------------------------------------------------------------------
# Registry pre-flight


def registryResolve(base: str, name: str, version: str, context: Optional[ssl.SSLContext] = None, timeout: float = 15.0) -> Tuple[str, Any]:
    """
    Check C{name} (and C{version}, or latest when "") on the registry.

    @return: C{(version, release)}.
    """
    from fangs.orchestrator.registryclient import ACCEPT_ABBREVIATED, packumentURL, parsePackument, RegistryError

    url = packumentURL(base, name)
    req = urllib.request.Request(url, headers={"Accept": ACCEPT_ABBREVIATED, "User-Agent": "fangs-cli"})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
            doc = json.loads(r.read())
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise CLIError(
                "package %s is not on the registry %s (check the spelling, or --skip-registry-validate for a private package)"
                % (name, base),
                EXIT_NOT_FOUND,
            ) from None
        raise CLIError("registry %s answered %d for %s; retry later or use --skip-registry-validate" % (base, e.code, name)) from None
    except (urllib.error.URLError, OSError, ssl.SSLError) as e:
        raise _netProblem(base, e, "the npm registry") from None
    except ValueError:
        raise CLIError("registry %s sent malformed JSON for %s" % (base, name)) from None
    try:
        p = parsePackument(doc, name)
    except RegistryError as e:
        raise CLIError(str(e)) from None
    if not version:
        if not p.latest:
            raise CLIError("package %s has no latest dist-tag on %s; give --version" % (name, base))
        version = p.latest
    release = p.release(version)
    if release is None:
        recent = sorted((r.version for r in p.releases), key=_versionKey)[-5:]
        raise CLIError(
            "%s@%s is not published on %s (latest is %s; recent: %s)"
            % (name, version, base, p.latest or "-", ", ".join(recent) or "none"),
            EXIT_NOT_FOUND,
        )
    return version, release


def _versionKey(v: str) -> Any:
    from fangs.orchestrator.registryclient import versionKey

    return versionKey(v)


# ---------------------------------------------------------------------------
# Output


def fmtTime(text: Optional[str]) -> str:
    if not text:
        return "-"
    try:
        return wire.parseTimestamp(text).strftime("%Y-%m-%d %H:%M:%S")
    except wire.WireError:
        return text


def ago(text: Optional[str]) -> str:
    if not text:
        return "(never)"
    try:
        delta = time.time() - wire.parseTimestamp(text).timestamp()
    except wire.WireError:
        return text
    if delta < 0:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return "%d%s ago" % (delta // size, unit)
    return "%ds ago" % (delta,)


def trunc(s: Any, n: int) -> str:
    s = "" if s is None else str(s)
    return s if len(s) <= n else s[: n - 1] + "…"


def short(runID: Optional[str]) -> str:
    return (runID or "-")[:SHORT]


def table(out: Any, headers: Sequence[str], rows: Sequence[Sequence[Any]], empty: str = "(none)") -> None:
    if not rows:
        out.write(empty + "\n")
        return
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n")


class Context:
    def __init__(self, args: argparse.Namespace, client: Client) -> None:
        self.args = args
        self.client = client
        self.out = sys.stdout
        self.err = sys.stderr

    def json(self, value: Any) -> None:
        self.out.write(json.dumps(value, indent=2, sort_keys=False) + "\n")

    def say(self, text: str) -> None:
        self.out.write(text + "\n")

    # -- ids ---------------------------------------------------------------------

    def resolve(self, prefix: str, kind: str) -> str:
        """
        A full id from a unique prefix: runs and deviations.
        """
        p = prefix.strip().lower()
        if not p or any(c not in "0123456789abcdef" for c in p) or len(p) > 32:
            raise CLIError("%s id %r must be hex (a prefix of its 32-character id)" % (kind, prefix), EXIT_USAGE)
        if len(p) == 32:
            return p
        if len(p) < 4:
            raise CLIError("%s id prefix %r is too short; give at least 4 characters" % (kind, prefix), EXIT_USAGE)
        if kind == "run":
            ids = [r["run_id"] for r in self.client.pages("/v1/runs", "runs")]
        else:
            ids = [d["id"] for d in self.client.pages("/v1/deviations", "deviations")]
        found = sorted({i for i in ids if i.startswith(p)})
        if not found:
            raise CLIError("no %s id starts with %s" % (kind, p), EXIT_NOT_FOUND)
        if len(found) > 1:
            raise CLIError(
                "%s id prefix %s is ambiguous: %s%s; give more characters"
                % (kind, p, ", ".join(found[:8]), ", ..." if len(found) > 8 else "")
            )
        return found[0]


# ---------------------------------------------------------------------------
# Commands


def cmdStatus(c: Context) -> int:
    health = c.client.get("/v1/health")
    runners = c.client.get("/v1/runners")
    if c.args.json:
        c.json({"health": health, "url": c.client.base, **runners})
        return EXIT_OK
    c.say("orchestrator  %s  %s (version %s) at %s" % (health["status"], health["orchestrator_id"], health["version"], c.client.base))
    c.say("queue depth   %d scan(s) waiting, %d runner long-poll(s) open" % (runners["queue_depth"], runners.get("long_polls_waiting", 0)))
    c.say("")
    table(
        c.out,
        ["RUNNER", "STATUS", "HOST", "KERNEL", "ACTIVE_RUNS", "LAST_SEEN"],
        [
            (r["runner_id"], r["status"], r["hostname"] or "-", r["kernel_version"] or "-",
             ",".join(short(x) for x in r["active_run_ids"]) or "-", "%gs ago" % (r["last_seen_seconds_ago"],))
            for r in runners["runners"]
        ],
        empty="no runners registered (scans wait in the shared queue until one polls)",
    )
    return EXIT_OK


def _checkName(name: str) -> str:
    try:
        return npm.checkPackageName(name)
    except ValueError as e:
        raise CLIError(str(e), EXIT_USAGE) from None


def _checkVersion(version: str) -> str:
    try:
        return npm.checkVersion(version)
    except ValueError as e:
        raise CLIError(str(e), EXIT_USAGE) from None


def _submit(c: Context, package: str, version: str, key: Optional[str] = None) -> str:
    from fangs.orchestrator.watcher import scanRequest

    request = scanRequest(package, version, int(c.args.duration * wire.SECOND), c.args.runner or "")
    headers = {"Idempotency-Key": key} if key else None
    reply = c.client.call("POST", "/v1/scans", request, headers)
    return reply["run_id"]


def _registry(c: Context) -> str:
    return c.args.registry_url or os.environ.get("FANGS_REGISTRY_URL") or DEFAULT_REGISTRY


def cmdPackageAdd(c: Context) -> int:
    from fangs.orchestrator.watcher import idempotencyKey

    name = _checkName(c.args.name)
    version = _checkVersion(c.args.version) if c.args.version else ""
    if c.args.skip_registry_validate:
        if not version and not c.args.skip_initial_scan:
            raise CLIError("with --skip-registry-validate give --version (or --skip-initial-scan)", EXIT_USAGE)
    else:
        version, _ = registryResolve(_registry(c), name, version)
    body = c.client.call("POST", "/v1/packages", {"name": name})
    runID = None
    if not c.args.skip_initial_scan:
        # The watcher's own key: its first poll will find this run, not queue another.
        runID = _submit(c, name, version, idempotencyKey(name, version))
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


class Progress:
    """
    A progress bar on standard error: redrawn in place on a terminal, a line
    every tenth of the way otherwise (logs stay short).
    """

    def __init__(self, err: Any, total: int, what: str, width: int = 30) -> None:
        self.err = err
        self.total = total
        self.what = what
        self.width = width
        self.tty = bool(getattr(err, "isatty", lambda: False)())
        self._lastTenth = -1

    def update(self, done: int, label: str = "") -> None:
        if not self.total:
            return
        filled = self.width * done // self.total
        bar = "[%s%s] %d/%d %s" % ("#" * filled, "." * (self.width - filled), done, self.total, self.what)
        if self.tty:
            self.err.write("\r\x1b[K" + bar + ("  " + trunc(label, 40) if label else ""))
            if done == self.total:
                self.err.write("\n")
        else:
            tenth = 10 * done // self.total
            if tenth != self._lastTenth:
                self._lastTenth = tenth
                self.err.write(bar + "\n")
        self.err.flush()


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
    name = _checkName(c.args.name)
    body = c.client.call("DELETE", "/v1/packages/" + urllib.parse.quote(name, safe="@/"))
    if c.args.json:
        c.json(body)
    else:
        c.say('removed "%s" from watched packages (its runs and baseline are kept)' % (name,))
    return EXIT_OK


def cmdReleaseList(c: Context) -> int:
    name = _checkName(c.args.package)
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


def cmdScanSubmit(c: Context) -> int:
    spec = c.args.spec
    package, version = c.args.package, c.args.version
    if spec:
        if package or version:
            raise CLIError("give PACKAGE@VERSION or --package/--version, not both", EXIT_USAGE)
        package, version = npm.splitSpec(spec)
    if not package:
        raise CLIError("which package? give PACKAGE@VERSION or --package NAME --version X.Y.Z", EXIT_USAGE)
    package = _checkName(package)
    if version:
        version = _checkVersion(version)
    if c.args.skip_registry_validate:
        if not version:
            raise CLIError("with --skip-registry-validate give an exact version", EXIT_USAGE)
    else:
        version, _ = registryResolve(_registry(c), package, version)
    runID = _submit(c, package, version)
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


TERMINAL = ("done", "failed", "timeout", "cancelled")


FINAL_LINES = ("run.completed", "run.failed", "run.cancelled")


def streamLines(c: Context, deadline: Optional[float] = None, **query: Any) -> Iterator[Dict[str, Any]]:
    """
    The run stream's lines (C{GET /v1/runs/stream}), parsed, for ever: a
    broken or cut stream is reopened with the cursor of the last line seen,
    so nothing is missed.  Stops at C{deadline} (monotonic) if given.
    Raises L{APIError} if the orchestrator refuses the stream (404 from one
    without a stream).
    """
    since = query.pop("since", None)
    backoff = 0.5
    while deadline is None or time.monotonic() < deadline:
        q = {k: v for k, v in query.items() if v}
        if since:
            q["since"] = since
        try:
            for raw in c.client.lines("/v1/runs/stream?" + urllib.parse.urlencode(q)):
                if not raw.strip():
                    continue
                line = json.loads(raw)
                if line.get("type") != "stream.keepalive" and line.get("cursor"):
                    since = line["cursor"]
                backoff = 0.5
                yield line
                if deadline is not None and time.monotonic() >= deadline:
                    return
        except APIError:
            raise
        except (CLIError, OSError, ValueError) as e:
            if deadline is not None and time.monotonic() >= deadline:
                return
            c.err.write("fangs: run stream interrupted (%s); reconnecting\n" % (_oneLine(e),))
            c.err.flush()
        time.sleep(backoff)
        backoff = min(backoff * 2, 10.0)


def _oneLine(e: BaseException) -> str:
    return (str(e) or type(e).__name__).splitlines()[0]


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
    showRun(c, run, _steps(c, runID))
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
        _checkName(c.args.package)
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


def _steps(c: Context, runID: str) -> Optional[List[Dict[str, Any]]]:
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
    showRun(c, run, _steps(c, runID))
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


def _decide(c: Context, what: str) -> int:
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
    name = _checkName(c.args.package)
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
        body["package_name"] = _checkName(c.args.package)
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


def pickByPrefix(ids: Sequence[str], prefix: str, what: str, listCommand: str) -> str:
    """
    The one id of C{ids} that is C{prefix} or starts with it (ids listed
    by the orchestrator: allowlist entries, tokens).
    """
    found = sorted({i for i in ids if i.startswith(prefix)})
    if prefix in found:
        return prefix
    if not found:
        raise CLIError("no %s id starts with %s (see %s)" % (what, prefix, listCommand), EXIT_NOT_FOUND)
    if len(found) > 1:
        raise CLIError("%s id prefix %s is ambiguous: %s" % (what, prefix, ", ".join(found)))
    return found[0]


def cmdAllowRemove(c: Context) -> int:
    entries = c.client.get("/v1/allow")["entries"]
    entryID = pickByPrefix([e["id"] for e in entries], c.args.id, "allowlist entry", "fangs allow list")
    body = c.client.call("DELETE", "/v1/allow/" + urllib.parse.quote(entryID))
    if c.args.json:
        c.json(body)
    else:
        c.say("removed allowlist entry %s" % (entryID,))
    return EXIT_OK


def _notifiers(c: Context, method: str, path: str, body: Any = None) -> Any:
    try:
        return c.client.call(method, path, body)
    except APIError as e:
        if e.status == 404 and e.errcode == "not_found" and e.message.startswith("no route"):
            raise CLIError("this orchestrator has no notifier API (%s %s); upgrade the orchestrator" % (method, path)) from None
        raise


def cmdNotifierAdd(c: Context) -> int:
    headers: Dict[str, str] = {}
    for h in c.args.header or ():
        k, sep, v = h.partition("=")
        if not sep or not k:
            raise CLIError("--header must be NAME=VALUE (got %r)" % (h,), EXIT_USAGE)
        headers[k] = v
    body = {
        "name": c.args.name, "url": c.args.url, "template": c.args.template, "secret_env": c.args.secret_env or "",
        "min_severity": c.args.min_severity or "", "headers": headers, "packages": c.args.package or [],
        "enabled": not c.args.disabled,
    }
    reply = _notifiers(c, "POST", "/v1/notifiers", body)
    if c.args.json:
        c.json(reply)
    else:
        c.say('notifier "%s" saved' % (c.args.name,))
    return EXIT_OK


def cmdNotifierList(c: Context) -> int:
    reply = _notifiers(c, "GET", "/v1/notifiers")
    items = reply.get("notifiers", []) if isinstance(reply, dict) else reply
    if c.args.json:
        c.json(items)
        return EXIT_OK
    table(c.out, ["NAME", "TEMPLATE", "URL", "MIN_SEV", "HMAC"],
          [(n.get("name"), n.get("template"), trunc(n.get("url"), 50), n.get("min_severity") or "any",
            "$" + n["secret_env"] if n.get("secret_env") else "no") for n in items],
          empty="no notifiers (add one: fangs notifier add --name N --url URL)")
    return EXIT_OK


def cmdNotifierRemove(c: Context) -> int:
    reply = _notifiers(c, "DELETE", "/v1/notifiers/" + urllib.parse.quote(c.args.name, safe=""))
    c.json(reply) if c.args.json else c.say('notifier "%s" removed' % (c.args.name,))
    return EXIT_OK


def cmdNotifierHistory(c: Context) -> int:
    reply = _notifiers(c, "GET", "/v1/notifiers/%s/deliveries" % (urllib.parse.quote(c.args.name, safe=""),))
    rows = reply.get("deliveries", [])
    if c.args.json:
        c.json(rows)
        return EXIT_OK
    table(c.out, ["RUN", "ATTEMPT", "STATUS", "HTTP", "AT", "ERROR"],
          [(str(d.get("run_id", ""))[:12], d.get("attempt"), d.get("status"), d.get("http_status") or "-",
            d.get("at") or d.get("at_at") or "", trunc(d.get("error") or "", 40)) for d in rows],
          empty="no deliveries yet")
    return EXIT_OK


def cmdNotifierTest(c: Context) -> int:
    reply = _notifiers(c, "POST", "/v1/notifiers/%s/test" % (urllib.parse.quote(c.args.name, safe=""),))
    c.json(reply) if c.args.json else c.say('test notification sent to "%s"' % (c.args.name,))
    return EXIT_OK


def cmdTokenCreate(c: Context) -> int:
    body = {"name": c.args.name, "scopes": c.args.scope}
    if getattr(c.args, "token_tenant", None):
        body["tenant"] = c.args.token_tenant
    reply = c.client.call("POST", "/v1/tokens", body)
    if c.args.json:
        c.json(reply)
    else:
        c.say("token %s (%s, scopes %s, tenant %s) created; it is shown once:"
              % (reply["id"], reply["name"], " ".join(reply["scopes"]), reply.get("tenant", "default")))
        c.say(reply["token"])
    return EXIT_OK


def cmdTokenList(c: Context) -> int:
    tokens = c.client.get("/v1/tokens")["tokens"]
    if c.args.json:
        c.json(tokens)
        return EXIT_OK
    table(c.out, ["ID", "NAME", "TENANT", "SCOPES", "CREATED", "BY", "REVOKED"],
          [(t["id"], t["name"], t.get("tenant", "default"), " ".join(t["scopes"]), t["created_at"], t["created_by"],
            t["revoked_at"] or "-") for t in tokens],
          empty="no tokens (create one: fangs token create --name N --scope orchestrator:read)")
    return EXIT_OK


def cmdTokenRevoke(c: Context) -> int:
    active = [t["id"] for t in c.client.get("/v1/tokens")["tokens"] if not t["revoked_at"]]
    tokenID = pickByPrefix(active, c.args.id, "active token", "fangs token list")
    reply = c.client.call("DELETE", "/v1/tokens/" + tokenID)
    c.json(reply) if c.args.json else c.say("revoked token %s" % (tokenID,))
    return EXIT_OK


# ---------------------------------------------------------------------------
# Arguments


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, "fangs: %s (see fangs %s--help)\n" % (message, self._sub()))

    def _sub(self) -> str:
        parts = self.prog.split()[1:]
        return " ".join(parts) + " " if parts else ""


def buildParser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    env = os.environ.get
    common.add_argument("--orchestrator", default=argparse.SUPPRESS, metavar="URL",
                        help="orchestrator base URL (env FANGS_ORCHESTRATOR, default %s)" % (DEFAULT_ORCHESTRATOR,))
    common.add_argument("--tls-ca", default=argparse.SUPPRESS, metavar="FILE", help="CA bundle that signed the orchestrator's certificate")
    common.add_argument("--tls-cert", default=argparse.SUPPRESS, metavar="FILE", help="client certificate (mTLS)")
    common.add_argument("--tls-key", default=argparse.SUPPRESS, metavar="FILE", help="client certificate's key (mTLS)")
    common.add_argument("--token", default=argparse.SUPPRESS, help="bearer token (env FANGS_TOKEN)")
    common.add_argument("--tenant", default=argparse.SUPPRESS, metavar="TENANT",
                        help="the tenant to act on, for a credential of several tenants (env FANGS_TENANT; sent as X-Fangs-Tenant)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="JSON output for scripts")

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
        ("reject", lambda c: _decide(c, "reject"), "reject a run: its behaviour never enters the baseline"),
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
    cmd(g, "promote", lambda c: _decide(c, "promote"), "accept a run's behaviour into its package's baseline").add_argument(
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


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["pki"]:
        from fangs import pki

        return pki.main(argv[1:])
    parser = buildParser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        sys.stderr.write("fangs: no command given (see fangs --help)\n")
        return EXIT_USAGE
    if getattr(args, "fn", None) is None:
        sys.stderr.write("fangs: %s needs a subcommand (see fangs %s --help)\n" % (args.command, args.command))
        return EXIT_USAGE
    env = os.environ.get
    args.orchestrator = getattr(args, "orchestrator", None) or env("FANGS_ORCHESTRATOR") or DEFAULT_ORCHESTRATOR
    args.tls_ca = getattr(args, "tls_ca", None) or env("FANGS_TLS_CA")
    args.tls_cert = getattr(args, "tls_cert", None) or env("FANGS_TLS_CERT")
    args.tls_key = getattr(args, "tls_key", None) or env("FANGS_TLS_KEY")
    args.token = getattr(args, "token", None) or env("FANGS_TOKEN")
    args.tenant = getattr(args, "tenant", None) or env("FANGS_TENANT") or None
    args.json = getattr(args, "json", False)
    try:
        client = Client(args.orchestrator, _sslContext(args), args.token, tenant=args.tenant)
        code = args.fn(Context(args, client))
        sys.stdout.flush()
        return code
    except CLIError as e:
        sys.stdout.flush()
        sys.stderr.write("fangs: %s\n" % (e.message,))
        return e.code
    except KeyboardInterrupt:
        sys.stderr.write("fangs: interrupted\n")
        return 130
    except BrokenPipeError:
        return EXIT_OK


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
