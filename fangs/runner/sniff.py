# -*- test-case-name: tests.runner.test_gateway -*-
"""
Sniffing the first bytes of a sandbox's connection (pure parsers): the SNI
and ALPN of a TLS ClientHello, an HTTP/1 request head, a chunked request
body.  The gateway (L{fangs.runner.sinkhole}) decides from these whether a
connection is forwarded or sinkholed.
"""

from __future__ import annotations

import re
import struct
from typing import Dict, Tuple

import attrs

from fangs.egresspolicy import normaliseName  # noqa: F401 (names are compared normalised)

KIB = 1024

_METHOD = re.compile(rb"^[A-Z]{3,12} ")


@attrs.frozen
class ClientHello:
    sni: str
    alpn: Tuple[str, ...]


class NeedMore(Exception):
    pass


class NotThis(Exception):
    pass


def parseClientHello(data: bytes) -> ClientHello:
    """
    The SNI and ALPN of a TLS ClientHello at the start of C{data}.  Raises
    L{NeedMore} when it is incomplete, L{NotThis} when it is not one.
    """
    if len(data) < 1:
        raise NeedMore()
    if data[0] != 0x16:
        raise NotThis()
    body = b""
    off = 0
    while True:
        if len(data) < off + 5:
            raise NeedMore()
        ctype, major, length = data[off], data[off + 1], struct.unpack("!H", data[off + 3:off + 5])[0]
        if ctype != 0x16 or major != 3 or length == 0 or length > 18432:
            raise NotThis()
        if len(data) < off + 5 + length:
            raise NeedMore()
        body += data[off + 5:off + 5 + length]
        off += 5 + length
        if len(body) >= 4:
            if body[0] != 1:
                raise NotThis()
            hsLen = int.from_bytes(body[1:4], "big")
            if hsLen > 65536:
                raise NotThis()
            if len(body) >= 4 + hsLen:
                return _helloFields(body[4:4 + hsLen])


def _helloFields(h: bytes) -> ClientHello:
    try:
        p = 2 + 32
        p += 1 + h[p]
        p += 2 + struct.unpack("!H", h[p:p + 2])[0]
        p += 1 + h[p]
        if p + 2 > len(h):
            return ClientHello("", ())
        end = p + 2 + struct.unpack("!H", h[p:p + 2])[0]
        p += 2
        sni, alpn = "", []
        while p + 4 <= min(end, len(h)):
            etype, elen = struct.unpack("!HH", h[p:p + 4])
            ext = h[p + 4:p + 4 + elen]
            p += 4 + elen
            if etype == 0 and len(ext) >= 5 and ext[2] == 0:
                n = struct.unpack("!H", ext[3:5])[0]
                sni = ext[5:5 + n].decode("ascii", "replace")
            elif etype == 16 and len(ext) >= 2:
                q = 2
                while q < len(ext):
                    n = ext[q]
                    alpn.append(ext[q + 1:q + 1 + n].decode("ascii", "replace"))
                    q += 1 + n
        return ClientHello(sni, tuple(alpn))
    except (IndexError, struct.error):
        raise NotThis() from None


@attrs.frozen
class RequestHead:
    method: str
    target: str
    host: str
    path: str
    headers: Dict[str, str]
    length: int  # bytes of the head, CRLFCRLF included


def parseRequestHead(data: bytes, limit: int = 16 * KIB) -> RequestHead:
    """
    An HTTP/1 request head at the start of C{data}.  Raises L{NeedMore} or
    L{NotThis}.
    """
    if not _METHOD.match(data[:13]):
        if len(data) < 13 and re.match(rb"^[A-Z]*$", data):
            raise NeedMore()
        raise NotThis()
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) >= limit:
            raise NotThis()
        raise NeedMore()
    lines = data[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise NotThis()
    method, target = parts[0], parts[1]
    headers: Dict[str, str] = {}
    for line in lines[1:101]:
        name, sep, value = line.partition(":")
        if not sep:
            continue
        key = name.strip().lower()
        headers[key] = (headers[key] + ", " if key in headers else "") + value.strip()
    host, path = headers.get("host", ""), target
    m = re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://([^/?#]*)(.*)$", target)
    if m:
        host, path = m.group(1), m.group(2) or "/"
    if method == "CONNECT":
        host, path = target, ""
    return RequestHead(method, target, host, path, headers, end + 4)


def splitHostPort(text: str, default: int) -> Tuple[str, int]:
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit():
            host, port = text, ""
    return host, int(port) if port.isdigit() and int(port) < 65536 else default



class ChunkedBody:
    """
    An incremental decoder of a chunked body (payload bytes out).
    """

    def __init__(self) -> None:
        self._buf = b""
        self._left = -1  # bytes left in the current chunk; -1: reading a size line
        self._crlf = False
        self.done = False

    def feed(self, data: bytes) -> Tuple[bytes, bool]:
        out = b""
        self._buf += data
        while not self.done:
            if self._crlf:
                if len(self._buf) < 2:
                    break
                self._buf, self._crlf = self._buf[2:], False
            if self._left < 0:
                end = self._buf.find(b"\r\n")
                if end < 0:
                    if len(self._buf) > 1024:
                        self.done = True  # not chunked after all: stop here
                    break
                line = self._buf[:end].split(b";")[0].strip()
                self._buf = self._buf[end + 2:]
                try:
                    self._left = int(line, 16)
                except ValueError:
                    self.done = True
                    break
                if self._left == 0:
                    self.done = True
                    break
            take = self._buf[:self._left]
            out += take
            self._buf = self._buf[len(take):]
            self._left -= len(take)
            if self._left > 0:
                break
            self._left, self._crlf = -1, True
        return out, self.done
