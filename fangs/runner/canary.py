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
value split over labels is found.
"""

from __future__ import annotations

import base64
import binascii
import urllib.parse
from typing import Iterable, List, Mapping, Tuple

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
