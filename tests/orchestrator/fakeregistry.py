"""
A fake npm registry as a twisted.web resource: packuments (full and
abbreviated) with ETags and 304s, scheduled failures (429 with Retry-After,
5xx), scoped names as C{@scope%2fname}, and a log of what was asked.

Serve it in memory with C{StubTreq(FakeRegistry())} or on loopback with
C{Site(FakeRegistry())}.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import unquote

from twisted.web.resource import Resource

ABBREVIATED = b"application/vnd.npm.install-v1+json"
ABBREVIATED_FIELDS = ("name", "version", "dist", "dependencies", "optionalDependencies", "peerDependencies",
                      "bin", "hasInstallScript", "deprecated", "engines")
EPOCH = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def iso(seconds: float) -> str:
    when = EPOCH + datetime.timedelta(seconds=seconds)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (when.microsecond // 1000,)


class FakeRegistry(Resource):
    isLeaf = True

    def __init__(self, abbreviatedHasTimes: bool = False) -> None:
        super().__init__()
        self.docs: Dict[str, Dict[str, Any]] = {}
        self.abbreviatedHasTimes = abbreviatedHasTimes
        #: (name, status, accept, if-none-match) per request.
        self.log: List[Tuple[str, int, str, Optional[str]]] = []
        #: name -> list of (status, headers) answered before the real one.
        self.failures: Dict[str, List[Tuple[int, Dict[str, str]]]] = {}
        self._clock = 0.0
        self._encoded: Dict[Tuple[str, bool], Tuple[bytes, str]] = {}

    # -- publishing ------------------------------------------------------------

    def publish(self, name: str, version: str, tag: Optional[str] = "latest", at: Optional[float] = None,
                meta: Optional[Dict[str, Any]] = None) -> None:
        """
        Publish C{name@version}.  C{meta} replaces or adds manifest fields
        (C{scripts}, C{dependencies}, C{bin}, C{repository}, C{maintainers},
        C{_npmUser}, ...); by default a release has a postinstall.
        """
        self._clock = self._clock + 60 if at is None else at
        doc = self.docs.setdefault(
            name, {"_id": name, "name": name, "dist-tags": {}, "versions": {}, "time": {"created": iso(self._clock)}}
        )
        base = name.split("/")[-1]
        shasum = hashlib.sha1(("%s@%s" % (name, version)).encode()).hexdigest()
        doc["versions"][version] = {
            "name": name,
            "version": version,
            "description": "fake package " * 20,
            "scripts": {"postinstall": "node x.js"},
            "maintainers": [{"name": "alice", "email": "alice@example.test"}],
            "_npmUser": {"name": "alice", "email": "alice@example.test"},
            "dist": {
                "integrity": "sha512-" + hashlib.sha512(version.encode()).hexdigest()[:86] + "==",
                "shasum": shasum,
                "tarball": "https://registry.example/%s/-/%s-%s.tgz" % (name, base, version),
            },
        }
        doc["versions"][version].update(meta or {})
        scripts = doc["versions"][version].get("scripts") or {}
        if any(k in scripts for k in ("preinstall", "install", "postinstall")):
            doc["versions"][version]["hasInstallScript"] = True
        doc["time"][version] = iso(self._clock)
        doc["time"]["modified"] = iso(self._clock)
        if tag:
            doc["dist-tags"][tag] = version
        self._encoded = {k: v for k, v in self._encoded.items() if k[0] != name}

    def fail(self, name: str, status: int, times: int = 1, retryAfter: Optional[str] = None) -> None:
        headers = {"Retry-After": retryAfter} if retryAfter is not None else {}
        self.failures.setdefault(name, []).extend([(status, headers)] * times)

    def statuses(self, name: Optional[str] = None) -> List[int]:
        return [s for n, s, _, _ in self.log if name is None or n == name]

    # -- serving ---------------------------------------------------------------

    def _encode(self, name: str, abbreviated: bool) -> Tuple[bytes, str]:
        key = (name, abbreviated)
        if key not in self._encoded:
            doc = self.docs[name]
            if abbreviated:
                out: Dict[str, Any] = {
                    "name": name,
                    "modified": doc["time"]["modified"],
                    "dist-tags": doc["dist-tags"],
                    # As the registry's abbreviated form: no scripts,
                    # repository or maintainers.
                    "versions": {
                        v: {k: m[k] for k in ABBREVIATED_FIELDS if k in m} for v, m in doc["versions"].items()
                    },
                }
                if self.abbreviatedHasTimes:
                    out["time"] = doc["time"]
            else:
                out = doc
            body = json.dumps(out).encode()
            self._encoded[key] = (body, '"%s"' % (hashlib.sha1(body).hexdigest()[:20],))
        return self._encoded[key]

    def render_GET(self, request: Any) -> bytes:
        raw = request.path.decode("ascii")[1:]
        name = unquote(raw)
        accept = (request.getHeader(b"accept") or b"").decode()
        inm = request.getHeader(b"if-none-match")
        inm = inm.decode() if inm else None
        if raw.startswith("@") and "/" in raw:
            status = 400  # the real registry wants the slash encoded
            request.setResponseCode(status)
            self.log.append((name, status, accept, inm))
            return b'{"error":"scoped name must be encoded"}'
        pending = self.failures.get(name)
        if pending:
            status, headers = pending.pop(0)
            request.setResponseCode(status)
            for k, v in headers.items():
                request.setHeader(k.encode(), v.encode())
            self.log.append((name, status, accept, inm))
            return b'{"error":"slow down"}'
        if name not in self.docs:
            request.setResponseCode(404)
            self.log.append((name, 404, accept, inm))
            return b'{"error":"Not found"}'
        body, etag = self._encode(name, ABBREVIATED.decode() in accept)
        request.setHeader(b"ETag", etag.encode())
        if inm == etag:
            request.setResponseCode(304)
            self.log.append((name, 304, accept, inm))
            return b""
        request.setHeader(b"Content-Type", b"application/json")
        self.log.append((name, 200, accept, inm))
        return body
