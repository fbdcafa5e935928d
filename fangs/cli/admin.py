"""
C{fangs status} and C{fangs token ...}: the orchestrator's health, runners
and queue, and API tokens.
"""

from __future__ import annotations

from fangs.cli.context import Context, pickByPrefix
from fangs.cli.http import EXIT_OK
from fangs.cli.render import short, table



def cmdStatus(c: Context) -> int:
    health = c.client.get("/v1/health")
    runners = c.client.get("/v1/runners")
    if c.args.json:
        c.json({"health": health, "url": c.client.base, **runners})
        return EXIT_OK
    c.say("orchestrator  %s  %s (version %s) at %s" % (health["status"], health["orchestrator_id"], health["version"], c.client.base))
    c.say("queue depth   %d scan(s) waiting, %d runner long-poll(s) open" % (runners["queue_depth"], runners.get("long_polls_waiting", 0)))
    c.say("")
    table(
        c.out,
        ["RUNNER", "STATUS", "HOST", "KERNEL", "ACTIVE_RUNS", "LAST_SEEN"],
        [
            (r["runner_id"], r["status"], r["hostname"] or "-", r["kernel_version"] or "-",
             ",".join(short(x) for x in r["active_run_ids"]) or "-", "%gs ago" % (r["last_seen_seconds_ago"],))
            for r in runners["runners"]
        ],
        empty="no runners registered (scans wait in the shared queue until one polls)",
    )
    return EXIT_OK


def cmdTokenCreate(c: Context) -> int:
    body = {"name": c.args.name, "scopes": c.args.scope}
    if getattr(c.args, "token_tenant", None):
        body["tenant"] = c.args.token_tenant
    reply = c.client.call("POST", "/v1/tokens", body)
    if c.args.json:
        c.json(reply)
    else:
        c.say("token %s (%s, scopes %s, tenant %s) created; it is shown once:"
              % (reply["id"], reply["name"], " ".join(reply["scopes"]), reply.get("tenant", "default")))
        c.say(reply["token"])
    return EXIT_OK


def cmdTokenList(c: Context) -> int:
    tokens = c.client.get("/v1/tokens")["tokens"]
    if c.args.json:
        c.json(tokens)
        return EXIT_OK
    table(c.out, ["ID", "NAME", "TENANT", "SCOPES", "CREATED", "BY", "REVOKED"],
          [(t["id"], t["name"], t.get("tenant", "default"), " ".join(t["scopes"]), t["created_at"], t["created_by"],
            t["revoked_at"] or "-") for t in tokens],
          empty="no tokens (create one: fangs token create --name N --scope orchestrator:read)")
    return EXIT_OK


def cmdTokenRevoke(c: Context) -> int:
    active = [t["id"] for t in c.client.get("/v1/tokens")["tokens"] if not t["revoked_at"]]
    tokenID = pickByPrefix(active, c.args.id, "active token", "fangs token list")
    reply = c.client.call("DELETE", "/v1/tokens/" + tokenID)
    c.json(reply) if c.args.json else c.say("revoked token %s" % (tokenID,))
    return EXIT_OK
