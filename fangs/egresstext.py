"""
One line of text for an egress attempt (an C{egress_attempt} event payload),
shared by C{fangs run show} and the dashboard's run page:

    tried POST http://hooks.example/x with 2.1 KiB containing the bait npm token (sinkholed)

Pure logic, no Twisted.
"""

from __future__ import annotations

from typing import Any, Dict, List

BAIT_WORDS = {
    "npm_token": "npm token",
    "aws_access_key_id": "AWS access key id",
    "aws_secret_access_key": "AWS secret key",
    "ssh_private_key": "SSH private key",
}

#: Events listed on a run before "and N more".
LIST_LIMIT = 50


def size(n: int) -> str:
    if n < 1024:
        return "%d B" % (n,)
    if n < 1024 * 1024:
        return "%.1f KiB" % (n / 1024.0,)
    return "%.1f MiB" % (n / 1024.0 / 1024.0,)


def _baits(names: List[str]) -> str:
    words = [BAIT_WORDS.get(n, n.replace("_", " ")) for n in names]
    if len(words) == 1:
        return "the bait " + words[0]
    return "the baits " + ", ".join(words[:-1]) + " and " + words[-1]


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def describeAttempt(p: Dict[str, Any]) -> str:
    """
    What the sandbox tried, how big it was, which bait it carried, and what
    the gateway did.
    """
    if not isinstance(p, dict):
        return "egress attempt"
    action = _str(p.get("Action")) or "recorded"
    proto = _str(p.get("Protocol")) or "tcp"
    port = p.get("DestPort") if isinstance(p.get("DestPort"), int) else 0
    dest = _str(p.get("DestName")) or _str(p.get("DestIP"))
    if action == "cut" and isinstance(p.get("Cut"), dict):
        counts = ", ".join("%s %s" % (v, k) for k, v in sorted(p["Cut"].items()) if isinstance(v, int))
        return "egress limits cut this run's traffic: " + (counts or "(no counts)")
    if proto == "dns":
        text = "looked up %s%s" % (dest or "?", " (%s)" % p["QType"] if _str(p.get("QType")) else "")
    elif proto == "http":
        host = _str(p.get("Host")) or dest
        url = "http://%s%s" % (host, _str(p.get("Path")))
        text = "tried %s %s" % (_str(p.get("Method")) or "?", url)
    elif proto == "tls":
        text = "tried TLS to %s:%s" % (_str(p.get("SNI")) or dest or "?", port)
        if isinstance(p.get("ALPN"), list) and p["ALPN"]:
            text += " (ALPN %s)" % (",".join(str(a) for a in p["ALPN"]),)
    else:
        text = "tried %s to %s:%s" % (proto.upper(), dest or "?", port)
    body = p.get("BodySize")
    if isinstance(body, int) and body > 0:
        text += " with " + size(body)
    canaries = [c for c in (p.get("Canaries") or []) if isinstance(c, str)]
    if canaries:
        text += (" containing " if isinstance(body, int) and body > 0 else " carrying ") + _baits(canaries)
    if action == "cut" and _str(p.get("Cut")):
        text += " (cut: %s limit)" % (p["Cut"],)
    else:
        text += " (%s)" % (action,)
    return text


def summarise(payloads: List[Dict[str, Any]]) -> List[str]:
    """
    The lines of a run's egress attempts: what limits cut first, then each
    distinct attempt once in the order first seen, with a count when it
    repeated; allowed (forwarded) traffic is left out.
    """
    cuts: List[str] = []
    seen: Dict[str, int] = {}
    for p in payloads:
        if not isinstance(p, dict) or p.get("Action") == "forwarded":
            continue
        text = describeAttempt(p)
        if p.get("Action") == "cut" and isinstance(p.get("Cut"), dict):
            cuts.append(text)
            continue
        seen[text] = seen.get(text, 0) + 1
    return cuts + [t if n == 1 else "%s \u00d7%d" % (t, n) for t, n in seen.items()]
