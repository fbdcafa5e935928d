"""
API tokens and server-side dashboard sessions.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from twisted.internet.defer import Deferred

from fangs.orchestrator.db.connector import _transaction


class TokensComponent:
    """
    API tokens and server-side dashboard sessions.
    """

    # -- api tokens --

    # A token is a tenant's, or all tenants' (C{*}: all-tenant admins and
    # runners) (migration 60).

    def createToken(self, tokenID: str, name: str, scopes: str, secretHash: str, actor: str, nowNs: int,
                    tenant: str = "*") -> "Deferred[None]":
        return self._call(self._thd_createToken, tokenID, name, scopes, secretHash, actor, nowNs, tenant)

    def _thd_createToken(self, conn: Any, tokenID: str, name: str, scopes: str, secretHash: str, actor: str, nowNs: int,
                         tenant: str = "*") -> None:
        with _transaction(conn):
            conn.execute(
                "INSERT INTO api_tokens (id, name, scopes, secret_hash, created_ns, created_by, tenant) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (tokenID, name, scopes, secretHash, nowNs, actor, tenant),
            )
            conn.execute(
                "INSERT INTO audit (tenant, at_ns, actor, action, target, detail) VALUES (?, ?, ?, 'token.create', ?, ?)",
                (tenant, nowNs, actor, "token:" + tokenID, json.dumps({"name": name, "scopes": scopes, "tenant": tenant})),
            )

    def lookupToken(self, tokenID: str) -> "Deferred[Optional[Dict[str, Any]]]":
        return self._call(self._thd_lookupToken, tokenID)

    def _thd_lookupToken(self, conn: Any, tokenID: str) -> Optional[Dict[str, Any]]:
        r = conn.execute(
            "SELECT id, name, scopes, secret_hash, created_ns, created_by, revoked_ns, tenant FROM api_tokens WHERE id = ?",
            (tokenID,),
        ).fetchone()
        if r is None:
            return None
        return dict(zip(("id", "name", "scopes", "secret_hash", "created_ns", "created_by", "revoked_ns", "tenant"), r))

    def listTokens(self, tenant: Optional[str] = None) -> "Deferred[List[Dict[str, Any]]]":
        """
        The tokens of C{tenant} (None: every token).
        """
        where, args = ("", ()) if tenant is None else (" WHERE tenant = ?", (tenant,))
        return self._call(
            lambda conn: [
                dict(zip(("id", "name", "scopes", "created_ns", "created_by", "revoked_ns", "tenant"), r))
                for r in conn.execute(
                    "SELECT id, name, scopes, created_ns, created_by, revoked_ns, tenant FROM api_tokens" + where
                    + " ORDER BY created_ns, id",
                    args,
                )
            ]
        )

    def revokeToken(self, tokenID: str, actor: str, nowNs: int, tenant: Optional[str] = None) -> "Deferred[bool]":
        """
        Revoke a token (with C{tenant}: only one of that tenant's).
        """
        return self._call(self._thd_revokeToken, tokenID, actor, nowNs, tenant)

    def _thd_revokeToken(self, conn: Any, tokenID: str, actor: str, nowNs: int, tenant: Optional[str] = None) -> bool:
        with _transaction(conn):
            row = conn.execute("SELECT tenant FROM api_tokens WHERE id = ? AND revoked_ns IS NULL", (tokenID,)).fetchone()
            if row is None or (tenant is not None and row[0] != tenant):
                return False
            cur = conn.execute(
                "UPDATE api_tokens SET revoked_ns = ? WHERE id = ? AND revoked_ns IS NULL", (nowNs, tokenID)
            )
            if cur.rowcount:
                conn.execute("DELETE FROM dashboard_sessions WHERE token_id = ?", (tokenID,))
                conn.execute(
                    "INSERT INTO audit (tenant, at_ns, actor, action, target) VALUES (?, ?, ?, 'token.revoke', ?)",
                    (row[0], nowNs, actor, "token:" + tokenID),
                )
            return cur.rowcount == 1

    def hasAdminToken(self) -> "Deferred[bool]":
        return self._call(
            lambda conn: conn.execute(
                "SELECT 1 FROM api_tokens WHERE revoked_ns IS NULL AND (' ' || scopes || ' ') LIKE '% orchestrator:admin %' LIMIT 1"
            ).fetchone()
            is not None
        )

    def revokeTokenSessions(self, tokenID: str) -> "Deferred[int]":
        """
        End every dashboard session of a token (called with its revocation).
        """
        return self._call(
            lambda conn: conn.execute("DELETE FROM dashboard_sessions WHERE token_id = ?", (tokenID,)).rowcount
        )

    # -- dashboard sessions --
    #
    # A session is a random id handed to the browser in a cookie signed with
    # a key kept outside the database; only the id's SHA-256 is stored, so
    # neither a copy of the database nor of the key alone makes a session.
    # Logout deletes the row; revoking the token ends its sessions at once
    # (the lookup joins the token).

    def createSession(self, idHash: str, tokenID: str, nowNs: int, expiresNs: int) -> "Deferred[None]":
        def thd(conn: Any) -> None:
            with _transaction(conn):
                conn.execute("DELETE FROM dashboard_sessions WHERE expires_ns < ?", (nowNs,))
                conn.execute(
                    "INSERT INTO dashboard_sessions (id_hash, token_id, created_ns, expires_ns) VALUES (?, ?, ?, ?)",
                    (idHash, tokenID, nowNs, expiresNs),
                )

        return self._call(thd)

    def lookupSession(self, idHash: str) -> "Deferred[Optional[Dict[str, Any]]]":
        """
        The live session with this id hash and its token, or None.
        """

        def thd(conn: Any) -> Optional[Dict[str, Any]]:
            r = conn.execute(
                "SELECT s.token_id, s.expires_ns, t.name, t.scopes, t.revoked_ns, t.tenant FROM dashboard_sessions s"
                " JOIN api_tokens t ON t.id = s.token_id WHERE s.id_hash = ?",
                (idHash,),
            ).fetchone()
            if r is None:
                return None
            return dict(zip(("token_id", "expires_ns", "name", "scopes", "revoked_ns", "tenant"), r))

        return self._call(thd)

    def deleteSession(self, idHash: str) -> "Deferred[bool]":
        return self._call(
            lambda conn: conn.execute("DELETE FROM dashboard_sessions WHERE id_hash = ?", (idHash,)).rowcount == 1
        )
