"""
The orchestrator's run stream (C{GET /v1/runs/stream}) as the CLI reads it:
parsed lines, reconnecting from the last cursor.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from typing import Any, Dict, Iterator, Optional

from fangs.cli.context import Context
from fangs.cli.http import APIError, CLIError


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
