"""
What every command gets (L{Context}: the parsed arguments, the API client,
the output streams, id prefixes resolved) and the argument checks commands
share.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from fangs import npm
from fangs.cli.http import EXIT_NOT_FOUND, EXIT_USAGE, CLIError, Client



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


def checkName(name: str) -> str:
    try:
        return npm.checkPackageName(name)
    except ValueError as e:
        raise CLIError(str(e), EXIT_USAGE) from None


def checkVersion(version: str) -> str:
    try:
        return npm.checkVersion(version)
    except ValueError as e:
        raise CLIError(str(e), EXIT_USAGE) from None


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
