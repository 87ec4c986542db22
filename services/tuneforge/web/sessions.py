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
    """Sessions in memory, bounded, ended after `idle_s` without a request (least recently used first).

    Anonymous sessions (they carry a sign-in form's CSRF token only) are kept apart, fewer and
    shorter-lived, so a flood of sign-in pages can never push a signed-in session out.
    """

    def __init__(self, idle_s: float = 8 * 3600, max_sessions: int = 10_000, anonymous_idle_s: float = 900.0) -> None:
        self.idle_s = idle_s
        self.max_sessions = max_sessions
        self.anonymous_idle_s = anonymous_idle_s
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._anonymous: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def _add(self, table: OrderedDict[str, Session], limit: int) -> Session:
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        session = Session(id=token, csrf_token=csrf, last_seen=time.monotonic())
        with self._lock:
            table[session.id] = session
            while len(table) > limit:
                table.popitem(last=False)
        return session

    def new(self) -> Session:
        """An anonymous session, for the sign-in form."""
        return self._add(self._anonymous, max(self.max_sessions // 10, 1))

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        now = time.monotonic()
        with self._lock:
            for table, idle_s in ((self._sessions, self.idle_s), (self._anonymous, self.anonymous_idle_s)):
                session = table.get(session_id)
                if session is None:
                    continue
                if now - session.last_seen > idle_s:
                    del table[session_id]
                    return None
                session.last_seen = now
                table.move_to_end(session_id)
                return session
            return None

    def sign_in(self, old: Session | None, api_key: str, principal: Principal) -> Session:
        """A new session (new id, new CSRF token) for the key; the one it replaces ends."""
        self.end(old)
        session = self._add(self._sessions, self.max_sessions)
        session.api_key, session.principal = api_key, principal
        return session

    def end(self, session: Session | None) -> None:
        if session is not None:
            with self._lock:
                self._sessions.pop(session.id, None)
                self._anonymous.pop(session.id, None)
