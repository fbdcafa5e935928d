"""
Message templates (Slack, Discord, generic JSON, SIEM): package-controlled
text is escaped so it cannot mention, link or break out of code spans.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Mapping, Sequence, Tuple

from fangs.orchestrator.notifytargets import SLACK_HEADER_MAX, MAX_LINES


# Templates


def _cut(text: str, limit: int) -> str:
    """
    At most C{limit} characters (never a split UTF-8 sequence), with an
    ellipsis when cut.
    """
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _finding(n: int) -> str:
    return "%d finding%s" % (n, "" if n == 1 else "s")


_ZWSP = "\u200b"
_MENTION = re.compile(r"@(?=[A-Za-z0-9!&#])")


def _breakMentions(text: str) -> str:
    """
    C{@everyone}, C{@here}, C{@channel}, C{@user}: a zero-width space after
    the C{@} keeps them from notifying anybody.
    """
    return _MENTION.sub("@" + _ZWSP, text)


def _breakLinks(text: str) -> str:
    return text.replace("://", ":" + _ZWSP + "//").replace("www.", "www" + _ZWSP + ".")


def slackText(text: Any) -> str:
    """
    Package-controlled text for Slack mrkdwn: C{&}, C{<}, C{>} escaped (no
    C{<!channel>}, C{<@U123>}, C{<http://x|masked>} links), mentions and
    bare links broken, markup characters and backticks neutralised.
    """
    text = str(text)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = text.replace("`", "\u02cb")
    for ch in "*_~|":
        text = text.replace(ch, ch + _ZWSP)
    return _breakLinks(_breakMentions(text))


def slackCode(text: Any) -> str:
    """
    Package-controlled text inside a Slack code span: no backtick can end
    the span, and C{&<>} are escaped (Slack parses them even in code).
    """
    text = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("`", "\u02cb")
    for ch in "*~":
        text = text.replace(ch, ch + _ZWSP)
    return _breakLinks(_breakMentions(text))


_DISCORD_MARKUP = re.compile(r"([\\*_~|`>\[\]])")


def discordText(text: Any) -> str:
    """
    Package-controlled text for Discord markdown: every markup character
    backslash-escaped (no masked links, no formatting), mentions and links
    broken.  (Messages also carry C{allowed_mentions: {parse: []}}.)
    """
    text = _DISCORD_MARKUP.sub(r"\\\1", str(text))
    text = text.replace("<", "\\<")
    return _breakLinks(_breakMentions(text))


def discordCode(text: Any) -> str:
    text = str(text).replace("`", "\u02cb").replace("<", "\u2039").replace(">", "\u203a")
    for ch in "*~|":
        text = text.replace(ch, ch + _ZWSP)
    return _breakLinks(_breakMentions(text))


def plainText(text: Any) -> str:
    """
    Package-controlled text for the generic JSON body (often forwarded to
    chat or shown in HTML by receivers): mentions and links broken, angle
    brackets and square brackets replaced by look-alikes.
    """
    text = str(text)
    for a, b in (("<", "\u2039"), (">", "\u203a"), ("[", "\u2045"), ("]", "\u2046"), ("`", "\u02cb"),
                 ("*", "*" + _ZWSP), ("~", "~" + _ZWSP)):
        text = text.replace(a, b)
    return _breakLinks(_breakMentions(text))


_DISCORD_COLOURS = {"critical": 0xE3635D, "high": 0xD3A851, "medium": 0xD3A851, "low": 0x6DA3D8}


def _by(d: Mapping[str, Any], code: Callable[[Any], str]) -> str:
    """
    " by <actor>" for a deviation that names its actor (an install script,
    npm, other; "registry" for a manifest delta), in a code span escaped by
    C{code} (the actor names a package: package-controlled text).
    """
    actor = d.get("actor") or ""
    return " by `%s`" % (code(_cut(actor, 80)),) if actor else ""


def render(template: str, run: Mapping[str, Any], deviations: Sequence[Mapping[str, Any]]) -> Tuple[bytes, str]:
    """
    The body and content type of the message about C{run} (a mapping with
    run_id, package_name, version, state, verdict, max_severity) and its
    C{deviations} (mappings with id, category, value, severity, reason,
    evidence_event_id, detected_at), worst first.
    """
    pkg, ver = run.get("package_name") or "?", run.get("version") or "?"
    maxSev = run.get("max_severity") or "none"
    n = len(deviations)
    if template == "generic":
        body = {
            "source": "fangs-orchestrator",
            "schema_version": "v1",
            "run_id": run["run_id"],
            "package_name": plainText(run.get("package_name", "")),
            "version": plainText(run.get("version", "")),
            "state": run.get("state", ""),
            "verdict": run.get("verdict", ""),
            "is_baseline": run.get("verdict") == "baseline",
            "max_severity": run.get("max_severity"),
            "deviations": [
                {
                    "id": d["id"],
                    "category": d["category"],
                    "value": plainText(d["value"]),
                    "severity": d["severity"],
                    "reason": plainText(d.get("reason", "")),
                    "actor": plainText(d.get("actor", "")),
                    "evidence_event_id": d.get("evidence_event_id"),
                }
                for d in deviations
            ],
            "deviation_count": n,
        }
        return _json(body), "application/json"
    if template == "siem":
        lines = [
            _json(
                {
                    "source": "fangs-orchestrator",
                    "schema_version": "v1",
                    "run_id": run["run_id"],
                    "package_name": run.get("package_name", ""),
                    "version": run.get("version", ""),
                    "verdict": run.get("verdict", ""),
                    "severity": d["severity"],
                    "category": d["category"],
                    "value": d["value"],
                    "reason": d.get("reason", ""),
                    "actor": d.get("actor", ""),
                    "evidence_event_id": d.get("evidence_event_id"),
                    "detected_at": d.get("detected_at"),
                }
            )
            + b"\n"
            for d in deviations
        ]
        return b"".join(lines), "application/x-ndjson"
    shown, more = deviations[:MAX_LINES], max(0, n - MAX_LINES)
    if template == "slack":
        spkg, sver = slackText(pkg), slackText(ver)
        text = "🚨 FANGS deviation: %s@%s — %s (max: %s)" % (spkg, sver, _finding(n), maxSev)
        lines = ["• *%s* `%s` — %s%s" % (d["severity"], slackCode(_cut(d["value"], 80)), d["category"], _by(d, slackCode))
                 for d in shown]
        if more:
            lines.append("_… and %d more_" % (more,))
        body = {
            "text": text,
            "blocks": [
                {
                    "type": "header",
                    "text": {"type": "plain_text", "text": _cut("🚨 FANGS deviation: %s@%s — %s (max: %s)" % (_breakLinks(_breakMentions(pkg)), _breakLinks(_breakMentions(ver)), _finding(n), maxSev), SLACK_HEADER_MAX), "emoji": True},
                },
                {
                    "type": "section",
                    "text": {
                        "type": "mrkdwn",
                        "text": "Run `%s` · package `%s` · version `%s`" % (run["run_id"][:12], slackCode(pkg), slackCode(ver)),
                    },
                },
                {"type": "section", "text": {"type": "mrkdwn", "text": _cut("\n".join(lines), 3000)}},
            ],
            "unfurl_links": False,
            "unfurl_media": False,
        }
        return _json(body), "application/json"
    if template == "discord":
        fields = [
            {"name": "%s · %s" % (d["severity"], d["category"]), "value": "`%s`%s" % (discordCode(_cut(d["value"], 100)), _by(d, discordCode)), "inline": False}
            for d in shown
        ]
        if more:
            fields.append({"name": "…", "value": "and %d more" % (more,), "inline": False})
        embed = {
            "title": _cut("FANGS deviation: %s@%s" % (discordText(pkg), discordText(ver)), 256),
            "description": "**%s** (max severity: **%s**)\nRun `%s`" % (_finding(n), maxSev, run["run_id"][:12]),
            "color": _DISCORD_COLOURS.get(maxSev, 0x808080),
            "fields": fields,
        }
        return _json({"username": "FANGS", "embeds": [embed], "allowed_mentions": {"parse": []}}), "application/json"
    raise ValueError("unknown template %r" % (template,))


def renderTest(template: str, name: str) -> Tuple[bytes, str]:
    """
    The body of C{fangs notifier test NAME}.
    """
    if template == "slack":
        return _json({"text": "FANGS notifier test — if you see this, your Slack webhook is wired correctly."}), "application/json"
    if template == "discord":
        return _json(
            {
                "username": "FANGS",
                "embeds": [
                    {
                        "title": "FANGS notifier test",
                        "description": "If you see this, your Discord webhook is wired correctly.",
                        "color": 6266213,
                    }
                ],
            }
        ), "application/json"
    body = _json(
        {"source": "fangs-orchestrator", "schema_version": "v1", "test": True, "notifier": name,
         "message": "notifier test from the fangs orchestrator"}
    )
    if template == "siem":
        return body + b"\n", "application/x-ndjson"
    return body, "application/json"


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
