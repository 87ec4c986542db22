"""Server-side sessions of the console: the API key stays on the server, the browser holds a random id.

The cookie is HttpOnly (no script reads it), SameSite=Strict (no other site's page sends it) and
Secure behind TLS; every state-changing request must also carry the session's CSRF token (a form
field or the `X-CSRF-Token` header). Signing in replaces the session id, so an id planted before
sign-in is worth nothing after it. The key is checked again on every request with the same
resolver the gRPC servers use, so a revoked key ends its sessions at once.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from tuneforge.common.auth import Principal

COOKIE_NAME = "tuneforge_console"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"


@dataclass
class Session:
    """One browser's session: anonymous until sign-in, then the key and who it belongs to."""

    id: str
    csrf_token: str
    last_seen: float
    api_key: str = ""
    principal: Principal | None = None
    #: One-shot messages for the next page (e.g. "job cancelled").
    notices: list[str] = field(default_factory=list)

    @property
    def signed_in(self) -> bool:
        return self.principal is not None

    def csrf_matches(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(token.encode(), self.csrf_token.encode())


class SessionStore:
    """Sessions in memory, bounded, ended after `idle_s` without a request (least recently used first)."""

    def __init__(self, idle_s: float = 8 * 3600, max_sessions: int = 10_000) -> None:
        self.idle_s = idle_s
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def new(self) -> Session:
        session = Session(
            id=secrets.token_urlsafe(32), csrf_token=secrets.token_urlsafe(32), last_seen=time.monotonic()
        )
        with self._lock:
            self._sessions[session.id] = session
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        now = time.monotonic()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if now - session.last_seen > self.idle_s:
                del self._sessions[session_id]
                return None
            session.last_seen = now
            self._sessions.move_to_end(session_id)
            return session

    def sign_in(self, old: Session | None, api_key: str, principal: Principal) -> Session:
        """A new session (new id, new CSRF token) for the key; the one it replaces ends."""
        self.end(old)
        session = self.new()
        session.api_key, session.principal = api_key, principal
        return session

    def end(self, session: Session | None) -> None:
        if session is not None:
            with self._lock:
                self._sessions.pop(session.id, None)
