"""
Text output of the CLI: times, truncation, short ids, aligned tables and a
progress bar on standard error.
"""

from __future__ import annotations

import time
from typing import Any, Optional, Sequence

from fangs import wire


SHORT = 12


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
