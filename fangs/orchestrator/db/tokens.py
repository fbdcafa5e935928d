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

    def createToken(self, tokenID: str, name: str, scopes: str, secretHash: str, actor: str, nowNs: int) -> "Deferred[None]":
        return self._call(self._thd_createToken, tokenID, name, scopes, secretHash, actor, nowNs)

    def _thd_createToken(self, conn: Any, tokenID: str, name: str, scopes: str, secretHash: str, actor: str, nowNs: int) -> None:
        with _transaction(conn):
            conn.execute(
                "INSERT INTO api_tokens (id, name, scopes, secret_hash, created_ns, created_by) VALUES (?, ?, ?, ?, ?, ?)",
                (tokenID, name, scopes, secretHash, nowNs, actor),
            )
            conn.execute(
                "INSERT INTO audit (at_ns, actor, action, target, detail) VALUES (?, ?, 'token.create', ?, ?)",
                (nowNs, actor, "token:" + tokenID, json.dumps({"name": name, "scopes": scopes})),
            )

    def lookupToken(self, tokenID: str) -> "Deferred[Optional[Dict[str, Any]]]":
        return self._call(self._thd_lookupToken, tokenID)

    def _thd_lookupToken(self, conn: Any, tokenID: str) -> Optional[Dict[str, Any]]:
        r = conn.execute(
            "SELECT id, name, scopes, secret_hash, created_ns, created_by, revoked_ns FROM api_tokens WHERE id = ?",
            (tokenID,),
        ).fetchone()
        if r is None:
            return None
        return dict(zip(("id", "name", "scopes", "secret_hash", "created_ns", "created_by", "revoked_ns"), r))

    def listTokens(self) -> "Deferred[List[Dict[str, Any]]]":
        return self._call(
            lambda conn: [
                dict(zip(("id", "name", "scopes", "created_ns", "created_by", "revoked_ns"), r))
                for r in conn.execute(
                    "SELECT id, name, scopes, created_ns, created_by, revoked_ns FROM api_tokens ORDER BY created_ns, id"
                )
            ]
        )

    def revokeToken(self, tokenID: str, actor: str, nowNs: int) -> "Deferred[bool]":
        return self._call(self._thd_revokeToken, tokenID, actor, nowNs)

    def _thd_revokeToken(self, conn: Any, tokenID: str, actor: str, nowNs: int) -> bool:
        with _transaction(conn):
            cur = conn.execute(
                "UPDATE api_tokens SET revoked_ns = ? WHERE id = ? AND revoked_ns IS NULL", (nowNs, tokenID)
            )
            if cur.rowcount:
                conn.execute("DELETE FROM dashboard_sessions WHERE token_id = ?", (tokenID,))
                conn.execute(
                    "INSERT INTO audit (at_ns, actor, action, target) VALUES (?, ?, 'token.revoke', ?)",
                    (nowNs, actor, "token:" + tokenID),
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
                "SELECT s.token_id, s.expires_ns, t.name, t.scopes, t.revoked_ns FROM dashboard_sessions s"
                " JOIN api_tokens t ON t.id = s.token_id WHERE s.id_hash = ?",
                (idHash,),
            ).fetchone()
            if r is None:
                return None
            return dict(zip(("token_id", "expires_ns", "name", "scopes", "revoked_ns"), r))

        return self._call(thd)

    def deleteSession(self, idHash: str) -> "Deferred[bool]":
        return self._call(
            lambda conn: conn.execute("DELETE FROM dashboard_sessions WHERE id_hash = ?", (idHash,)).rowcount == 1
        )
