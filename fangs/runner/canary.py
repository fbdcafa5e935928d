"""
Canaries: find a run's bait values, or an encoding of them, in bytes that left
the sandbox (a DNS query, a plain-HTTP body, a UDP datagram, a sinkholed
request).

Pure logic, no Twisted.  A stealer rarely sends a secret as it read it: it
base64-encodes it (often several times, inside a larger JSON document), hex- or
URL-encodes it, or splits it over DNS labels.  The matcher precomputes, for
every bait value, the byte patterns those encodings produce:

  - the raw value, URL-encoded (C{%XX}), hex (both cases);
  - base64 and URL-safe base64 at the three alignments a value takes inside a
    larger encoded document (the characters that depend on the neighbours are
    cut off, so the core is the same wherever the value sits);
  - base64 of base64 (the value alone, both alphabets);
  - base32 (both cases), the usual DNS-label encoding.

Every pattern is at least L{MIN_PATTERN} bytes long, so short values cannot
match by chance.  DNS names are also searched with their dots removed, so a
value split over labels is found.  L{expandForScan} undoes the wrappings
a pattern cannot see (gzip, nested base64, percent-encoding) first.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import urllib.parse
import zlib
from typing import Iterable, List, Mapping, Sequence, Tuple

#: Shorter patterns are not used: they would match ordinary traffic by chance.
MIN_PATTERN = 12


def _b64Cores(value: bytes, encode) -> Iterable[bytes]:
    """
    The parts of C{encode(prefix + value + suffix)} that depend only on
    C{value}, for each of the three alignments.
    """
    for shift in range(3):
        padded = b"\0" * shift + value
        enc = encode(padded).rstrip(b"=")
        # Characters covering the shifted prefix depend on the neighbours.
        start = (shift * 4 + 2) // 3
        # The last group is unstable unless the value ends on a group boundary.
        whole = (len(padded) // 3) * 4
        yield enc[start:whole]


def encodings(value: str) -> List[bytes]:
    """
    Every byte pattern under which C{value} is looked for.
    """
    raw = value.encode("utf-8")
    found = {raw, urllib.parse.quote(value, safe="").encode("ascii"),
             urllib.parse.quote_plus(value).encode("ascii"),
             binascii.hexlify(raw), binascii.hexlify(raw).upper(),
             base64.b32encode(raw).rstrip(b"="), base64.b32encode(raw).rstrip(b"=").lower()}
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        found.update(_b64Cores(raw, encode))
        found.add(encode(encode(raw)).rstrip(b"="))
    return sorted(p for p in found if len(p) >= MIN_PATTERN)


class CanaryMatcher:
    """
    Finds bait values of one run in outbound bytes.

    @param bait: bait name (C{"npm_token"}, C{"aws_secret_access_key"}, ...) to
        its value.
    """

    def __init__(self, bait: Mapping[str, str]) -> None:
        self._patterns: List[Tuple[bytes, str]] = []
        for name, value in sorted(bait.items()):
            for pattern in encodings(value):
                self._patterns.append((pattern, name))

    def __bool__(self) -> bool:
        return bool(self._patterns)

    def find(self, data: bytes) -> List[str]:
        """
        The names of the bait values found in C{data}, sorted, each once.
        """
        if not self._patterns or len(data) < MIN_PATTERN:
            return []
        names = {name for pattern, name in self._patterns if pattern in data}
        return sorted(names)

    def findInName(self, name: str) -> List[str]:
        """
        Like L{find} for a DNS name: its labels are also searched joined
        without the dots, so a value split over labels is found.
        """
        data = name.encode("utf-8", "surrogateescape")
        hits = set(self.find(data))
        hits.update(self.find(data.replace(b".", b"")))
        return sorted(hits)


def baitNames(names: Sequence[str]) -> List[str]:
    """
    Bait names as reported: a C{#n} suffix that told apart two copies of
    one kind of bait (two homes) is dropped.
    """
    return sorted({n.split("#", 1)[0] for n in names})


_B64RUN = re.compile(rb"[A-Za-z0-9+/_-]{16,}={0,2}")


def expandForScan(data: bytes, depth: int = 4, budget: int = 1024 * 1024) -> List[bytes]:
    """
    C{data} and what it decodes to, for the bait search: stealers wrap a
    secret in several layers (base64 of base64 of a JSON document, gzip,
    percent-encoding) before sending it.  Each base64-looking run is decoded
    (both alphabets), gzip/zlib streams are inflated, percent-escapes
    undone, recursively to C{depth} levels and C{budget} bytes in all.
    """
    out: List[bytes] = []
    seen = set()
    total = [0]

    def add(blob: bytes, level: int) -> None:
        if not blob or total[0] >= budget:
            return
        key = hashlib.sha256(blob).digest()
        if key in seen:
            return
        seen.add(key)
        blob = blob[:budget - total[0]]
        total[0] += len(blob)
        out.append(blob)
        if level >= depth:
            return
        for magic in (b"\x1f\x8b\x08", b"\x78\x9c", b"\x78\xda", b"\x78\x01"):
            start = blob.find(magic)
            for _ in range(4):
                if start < 0 or total[0] >= budget:
                    break
                try:
                    d = zlib.decompressobj(zlib.MAX_WBITS | 32)
                    add(d.decompress(blob[start:], max(1, budget - total[0])), level + 1)
                except zlib.error:
                    pass
                start = blob.find(magic, start + 1)
        if b"%" in blob:
            add(urllib.parse.unquote_to_bytes(blob), level + 1)
        for m in _B64RUN.finditer(blob):
            run = m.group(0).rstrip(b"=")
            for candidate in (run.replace(b"-", b"+").replace(b"_", b"/"),):
                for cut in range(4):
                    piece = candidate[cut:]
                    piece = piece[:len(piece) - len(piece) % 4]
                    if len(piece) < 16:
                        continue
                    try:
                        decoded = binascii.a2b_base64(piece)
                    except (binascii.Error, ValueError):
                        continue
                    add(decoded, level + 1)
            if total[0] >= budget:
                return

    add(data, 0)
    return out
