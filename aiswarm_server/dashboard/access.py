"""Who may use the dashboard: the admin or primary token, as a bearer header or through a login cookie.

A login keeps the token in this process's memory under a random session id; the browser holds only that id,
in an HttpOnly, SameSite=Strict cookie scoped to ``/ui``. Every request re-checks the token, so a revoked one
stops working at once. Actions made with the cookie must carry the session's CSRF token in a header and, when
the browser sends one, an Origin naming this broker; a bearer header is never sent by a browser on its own, so
it needs neither.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

from starlette.requests import Request

from aiswarm_server.auth import TokenRegistry
from aiswarm_server.models import Identity, Role

SESSION_COOKIE = "aiswarm_session"
CSRF_HEADER = "x-aiswarm-csrf"
SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 1000

DASHBOARD_ROLES = frozenset({Role.ADMIN, Role.PRIMARY})


class AccessDenied(Exception):
    """The request may not see or do this; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class Session:
    """A browser's login: the token it proved, the CSRF token its pages send back, when it ends."""

    token: str
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    expires_at: float = field(default_factory=lambda: time.time() + SESSION_SECONDS)


@dataclass(slots=True)
class Caller:
    """An authenticated dashboard caller and how it proved who it is."""

    identity: Identity
    session: Session | None  # None when the caller sent ``Authorization: Bearer``


def host_allowed(host: str, allowed: list[str]) -> bool:
    """Whether a Host (or an Origin's host part) matches one of the broker's allowed ``name:*`` patterns."""
    for pattern in allowed:
        name = pattern.removesuffix(":*")
        if host == name or (pattern.endswith(":*") and host.startswith(name + ":")):
            return True
    return False


class Access:
    """Sessions and the checks every dashboard request passes."""

    def __init__(self, allowed_hosts: list[str]) -> None:
        self.allowed_hosts = allowed_hosts
        self._sessions: dict[str, Session] = {}

    async def login(self, tokens: TokenRegistry, token: str) -> str:
        """Check a token typed into the login form; the new session id for the cookie."""
        identity = await tokens.authenticate(token.strip())
        _require_dashboard_role(identity)
        now = time.time()
        if len(self._sessions) >= MAX_SESSIONS:
            self._sessions = {k: s for k, s in self._sessions.items() if s.expires_at > now}
            while len(self._sessions) >= MAX_SESSIONS:
                self._sessions.pop(next(iter(self._sessions)))
        session_id = secrets.token_urlsafe(32)
        self._sessions[session_id] = Session(token=token.strip())
        return session_id

    def logout(self, request: Request) -> None:
        """Forget the request's session, if it has one."""
        session_id = request.cookies.get(SESSION_COOKIE)
        if session_id:
            self._sessions.pop(session_id, None)

    def check_host(self, request: Request) -> None:
        """Refuse a Host header that does not name this broker (DNS rebinding)."""
        if not host_allowed(request.headers.get("host", ""), self.allowed_hosts):
            raise AccessDenied(
                421, "this broker does not answer to that host name; open it by its own address."
            )

    def check_origin(self, request: Request) -> None:
        """Refuse a state change sent from another site's page."""
        origin = request.headers.get("origin")
        if origin is None:
            return
        expected = f"{request.url.scheme}://{request.headers.get('host', '')}"
        if origin != expected:
            raise AccessDenied(403, "cross-site request refused: use the dashboard's own pages.")

    async def caller(self, request: Request, tokens: TokenRegistry) -> Caller:
        """The admin or primary caller behind this request, from its bearer header or its session cookie."""
        self.check_host(request)
        header = request.headers.get("authorization", "")
        if header[:7].lower() == "bearer ":
            identity = await tokens.authenticate(header[7:].strip())
            _require_dashboard_role(identity)
            assert identity is not None
            return Caller(identity, None)
        session_id = request.cookies.get(SESSION_COOKIE)
        session = self._sessions.get(session_id) if session_id else None
        if session is None or session.expires_at < time.time():
            raise AccessDenied(
                401, "log in with the admin or primary token (see `aiswarm token path primary`)."
            )
        identity = await tokens.authenticate(session.token)
        if identity is None:
            self._sessions.pop(session_id or "", None)
            raise AccessDenied(
                401, "that token was revoked: log in again with a valid admin or primary token."
            )
        return Caller(identity, session)

    async def actor(self, request: Request, tokens: TokenRegistry) -> Caller:
        """A caller allowed to change state: :meth:`caller`, plus the cross-site checks for cookie logins."""
        caller = await self.caller(request, tokens)
        self.check_origin(request)
        if caller.session is not None and not secrets.compare_digest(
            request.headers.get(CSRF_HEADER, ""), caller.session.csrf
        ):
            raise AccessDenied(403, "missing or wrong CSRF token: reload the dashboard page and try again.")
        return caller


def _require_dashboard_role(identity: Identity | None) -> None:
    if identity is None:
        raise AccessDenied(401, "invalid or revoked token: use the admin or primary token.")
    if identity.role not in DASHBOARD_ROLES:
        raise AccessDenied(
            403, "worker tokens cannot open the dashboard: use the admin or primary token instead."
        )
