"""
The orchestrator's /v1 API for the CLI, blocking (urllib): the client, TLS
set-up, the exit codes and the errors every command raises, and the one-line
explanation of a network failure.
"""

from __future__ import annotations

import argparse
import errno
import json
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, Iterator, List, Optional

from fangs import wire


EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_DEVIATIONS = 4


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


def sslContext(args: argparse.Namespace) -> Optional[ssl.SSLContext]:
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


def netProblem(url: str, e: BaseException, what: str) -> CLIError:
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
            raise netProblem(self.base, e, "the orchestrator") from None

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
