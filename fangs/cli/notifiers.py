"""
C{fangs notifier ...}: webhook notifiers and their deliveries.
"""

from __future__ import annotations

import urllib.parse
from typing import Any, Dict

from fangs.cli.context import Context
from fangs.cli.http import EXIT_OK, EXIT_USAGE, APIError, CLIError
from fangs.cli.render import table, trunc



def _notifiers(c: Context, method: str, path: str, body: Any = None) -> Any:
    try:
        return c.client.call(method, path, body)
    except APIError as e:
        if e.status == 404 and e.errcode == "not_found" and e.message.startswith("no route"):
            raise CLIError("this orchestrator has no notifier API (%s %s); upgrade the orchestrator" % (method, path)) from None
        raise


def cmdNotifierAdd(c: Context) -> int:
    headers: Dict[str, str] = {}
    for h in c.args.header or ():
        k, sep, v = h.partition("=")
        if not sep or not k:
            raise CLIError("--header must be NAME=VALUE (got %r)" % (h,), EXIT_USAGE)
        headers[k] = v
    body = {
        "name": c.args.name, "url": c.args.url, "template": c.args.template, "secret_env": c.args.secret_env or "",
        "min_severity": c.args.min_severity or "", "headers": headers, "packages": c.args.package or [],
        "enabled": not c.args.disabled,
    }
    reply = _notifiers(c, "POST", "/v1/notifiers", body)
    if c.args.json:
        c.json(reply)
    else:
        c.say('notifier "%s" saved' % (c.args.name,))
    return EXIT_OK


def cmdNotifierList(c: Context) -> int:
    reply = _notifiers(c, "GET", "/v1/notifiers")
    items = reply.get("notifiers", []) if isinstance(reply, dict) else reply
    if c.args.json:
        c.json(items)
        return EXIT_OK
    table(c.out, ["NAME", "TEMPLATE", "URL", "MIN_SEV", "HMAC"],
          [(n.get("name"), n.get("template"), trunc(n.get("url"), 50), n.get("min_severity") or "any",
            "$" + n["secret_env"] if n.get("secret_env") else "no") for n in items],
          empty="no notifiers (add one: fangs notifier add --name N --url URL)")
    return EXIT_OK


def cmdNotifierRemove(c: Context) -> int:
    reply = _notifiers(c, "DELETE", "/v1/notifiers/" + urllib.parse.quote(c.args.name, safe=""))
    c.json(reply) if c.args.json else c.say('notifier "%s" removed' % (c.args.name,))
    return EXIT_OK


def cmdNotifierHistory(c: Context) -> int:
    reply = _notifiers(c, "GET", "/v1/notifiers/%s/deliveries" % (urllib.parse.quote(c.args.name, safe=""),))
    rows = reply.get("deliveries", [])
    if c.args.json:
        c.json(rows)
        return EXIT_OK
    table(c.out, ["RUN", "ATTEMPT", "STATUS", "HTTP", "AT", "ERROR"],
          [(str(d.get("run_id", ""))[:12], d.get("attempt"), d.get("status"), d.get("http_status") or "-",
            d.get("at") or d.get("at_at") or "", trunc(d.get("error") or "", 40)) for d in rows],
          empty="no deliveries yet")
    return EXIT_OK


def cmdNotifierTest(c: Context) -> int:
    reply = _notifiers(c, "POST", "/v1/notifiers/%s/test" % (urllib.parse.quote(c.args.name, safe=""),))
    c.json(reply) if c.args.json else c.say('test notification sent to "%s"' % (c.args.name,))
    return EXIT_OK
