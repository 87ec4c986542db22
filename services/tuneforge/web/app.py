"""The console's HTTP server: sign-in, sessions and CSRF, error pages, static files, and the routes.

Served by aiohttp (the stack the OpenAI-compatible API already uses), pages rendered on the server
with Jinja2 (autoescaped), a little plain JavaScript for streaming answers and live refresh, and no
asset from outside the package, so it works where nothing but the platform can be reached.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2
from aiohttp import web

from tuneforge.client import TuneforgeError
from tuneforge.common.auth import KeyResolver, LocalResolver
from tuneforge.common.errors import TuneforgeError as DomainError
from tuneforge.common.logging import get_logger
from tuneforge.web.backend import Backend, ServiceAddresses
from tuneforge.web.sessions import COOKIE_NAME, CSRF_FIELD, CSRF_HEADER, Session, SessionStore

log = get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BACKEND: web.AppKey[Backend] = web.AppKey("backend", Backend)
SESSIONS: web.AppKey[SessionStore] = web.AppKey("sessions", SessionStore)
RESOLVER: web.AppKey[KeyResolver] = web.AppKey("resolver", KeyResolver)
TEMPLATES: web.AppKey[jinja2.Environment] = web.AppKey("templates", jinja2.Environment)
SECURE_COOKIES: web.AppKey[bool] = web.AppKey("secure_cookies", bool)
SESSION: web.RequestKey[Session | None] = web.RequestKey("session", object)  # type: ignore[arg-type]
#: Paths served without a session.
PUBLIC_PREFIXES = ("/signin", "/static/", "/healthz")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Status of each gRPC code on a page; anything else is the platform failing (502).
STATUS_OF_CODE = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 409,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
SECURITY_HEADERS = {
    # every script, style and image comes from the console itself; nothing may frame it
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
MAX_BODY_BYTES = 1024 * 1024
#: Seconds requests in flight (a streamed answer) get to finish when the console stops.
SHUTDOWN_GRACE_S = 5.0


def session_of(request: web.Request) -> Session:
    return request[SESSION]


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    """A page from `templates/`, with the session (principal, CSRF token, notices) in its context."""
    session: Session | None = request.get(SESSION)
    notices = list(session.notices) if session is not None else []
    if session is not None:
        session.notices.clear()
    page = request.app[TEMPLATES].get_template(template)
    html = page.render(session=session, path=request.path, notices=notices, **context)
    return web.Response(text=html, status=status, content_type="text/html")


def error_page(request: web.Request, status: int, title: str, message: str, violations=()) -> web.Response:
    if request.path.startswith("/api/") or request.headers.get("Accept") == "application/json":
        body = {"error": {"status": status, "title": title, "message": message, "violations": list(violations)}}
        return web.json_response(body, status=status)
    return render(request, "error.html", status=status, title=title, message=message, violations=violations)


def _set_cookie(response: web.StreamResponse, request: web.Request, session: Session) -> None:
    response.set_cookie(
        COOKIE_NAME,
        session.id,
        httponly=True,
        samesite="Strict",
        secure=request.secure or request.app[SECURE_COOKIES],
        path="/",
    )


def _signin_redirect(request: web.Request) -> web.Response:
    if request.path.startswith("/api/"):
        return web.json_response({"error": {"status": 401, "message": "sign in again"}}, status=401)
    # a page's live fragment sends its reader back to the page itself after sign-in
    target = quote(
        request.path.removesuffix("/live") if request.path.endswith("/live") else request.path_qs, safe="/?=&"
    )
    return web.Response(status=303, headers={"Location": f"/signin?next={target}"})


async def _csrf_token_of(request: web.Request) -> str | None:
    token = request.headers.get(CSRF_HEADER)
    if token:
        return token
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()
        value = form.get(CSRF_FIELD)
        return value if isinstance(value, str) else None
    return None


@web.middleware
async def security_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Session, CSRF and sign-in checks, then the page; errors of the services become error pages."""
    sessions = request.app[SESSIONS]
    session = sessions.get(request.cookies.get(COOKIE_NAME))
    public = request.path.startswith(PUBLIC_PREFIXES)
    if session is None and request.path.startswith("/signin"):
        session = sessions.new()  # anonymous: carries the sign-in form's CSRF token
    request[SESSION] = session
    if request.method not in SAFE_METHODS and (
        session is None or not session.csrf_matches(await _csrf_token_of(request))
    ):
        log.warning("console_csrf_refused", path=request.path)
        return error_page(request, 403, "Refused", "this request carried no valid CSRF token; reload the page")
    if not public:
        if session is None or not session.signed_in:
            return _signin_redirect(request)
        try:  # the key again, exactly as the gRPC servers check it: a revoked key ends the session now
            principal = await asyncio.to_thread(request.app[RESOLVER].resolve, session.api_key)
        except DomainError:
            sessions.end(session)
            return _signin_redirect(request)
        session.principal = principal
    try:
        response = await handler(request)
    except TuneforgeError as exc:
        if exc.code == "UNAUTHENTICATED":
            sessions.end(session)
            return _signin_redirect(request)
        status = STATUS_OF_CODE.get(exc.code, 502)
        title = "Not found" if status == 404 else exc.code.replace("_", " ").capitalize()
        return error_page(request, status, title, exc.message, exc.violations)
    if session is not None and request.cookies.get(COOKIE_NAME) != session.id and not response.prepared:
        _set_cookie(response, request, session)
    return response


@web.middleware
async def headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
    if not response.prepared:
        response.headers.update(SECURITY_HEADERS)
        if not request.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"
    if isinstance(response, web.HTTPException) and response.status >= 300:
        raise response
    return response


async def signin_form(request: web.Request) -> web.Response:
    if session_of(request).signed_in:
        raise web.HTTPSeeOther(_safe_next(request.query.get("next")))
    return render(request, "signin.html", next=_safe_next(request.query.get("next")), error="", **_mode(request))


def _mode(request: web.Request) -> dict[str, str]:
    """In local single-tenant mode the sign-in page says that any key acts as the local tenant."""
    resolver = request.app[RESOLVER]
    return {"local_tenant": resolver.principal.tenant if isinstance(resolver, LocalResolver) else ""}


def _safe_next(target: str | None) -> str:
    """Only a path on this console (never `//host` or a scheme), else the playground.

    Control characters are refused before anything else: URL parsers drop tabs and newlines, so
    `/<TAB>/evil.com` would leave the check as a path and reach the browser as `//evil.com`.
    """
    if not target or any(ord(c) < 0x20 or ord(c) == 0x7F for c in target) or "\\" in target:
        return "/playground"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/") or parts.path.startswith("//"):
        return "/playground"
    return target


async def signin(request: web.Request) -> web.Response:
    form = await request.post()
    key = str(form.get("api_key", "")).strip()
    target = _safe_next(str(form.get("next", "")))
    try:
        principal = await asyncio.to_thread(request.app[RESOLVER].resolve, key)
    except DomainError as exc:
        log.info("console_signin_refused", reason=exc.message)
        return render(
            request, "signin.html", status=401, next=target, error="That API key was not accepted.", **_mode(request)
        )
    if principal.role == "service":  # a pod's key for the inference API: no tenant, so no page could work
        log.info("console_signin_refused", reason="service key", key_name=principal.key_name)
        error = "That is a service key; sign in with a tenant's API key."
        return render(request, "signin.html", status=403, next=target, error=error, **_mode(request))
    session = request.app[SESSIONS].sign_in(session_of(request), key, principal)
    log.info("console_signin", tenant=principal.tenant, key_name=principal.key_name)
    response = web.HTTPSeeOther(target)
    _set_cookie(response, request, session)
    raise response


async def signout(request: web.Request) -> web.Response:
    request.app[SESSIONS].end(session_of(request))
    response = web.HTTPSeeOther("/signin")
    response.del_cookie(COOKIE_NAME, path="/")
    raise response


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC_TYPES:
        raise web.HTTPNotFound()
    data = STATIC_CACHE.get(name)
    if data is None:  # read once, off the loop; the package's files do not change while it runs
        data = STATIC_CACHE[name] = await asyncio.to_thread(
            (resources.files("tuneforge.web") / "static" / name).read_bytes
        )
    response = web.Response(body=data, content_type=STATIC_TYPES[name])
    response.headers["Cache-Control"] = "max-age=3600"
    return response


STATIC_TYPES = {"console.css": "text/css", "console.js": "text/javascript"}
STATIC_CACHE: dict[str, bytes] = {}


def build_app(
    addresses: ServiceAddresses,
    resolver: KeyResolver,
    sessions: SessionStore | None = None,
    secure_cookies: bool = False,
) -> web.Application:
    """The console application over the services at `addresses`, checking keys with `resolver`."""
    from tuneforge.web import generation, pages, playground

    app = web.Application(middlewares=[headers_middleware, security_middleware], client_max_size=MAX_BODY_BYTES)
    app[SESSIONS] = sessions or SessionStore()
    app[RESOLVER] = resolver
    app[SECURE_COOKIES] = secure_cookies  # behind a TLS-terminating ingress the request itself is plain HTTP
    app[TEMPLATES] = jinja2.Environment(
        loader=jinja2.PackageLoader("tuneforge.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    app[TEMPLATES].filters.update(pages.FILTERS)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/static/{name}", static_file)
    app.router.add_get("/signin", signin_form)
    app.router.add_post("/signin", signin)
    app.router.add_post("/signout", signout)
    playground.register(app.router)
    pages.register(app.router)
    generation.register(app.router)  # Self-Instruct runs and their review (#19 point 4)

    async def open_backend(app: web.Application) -> None:
        app[BACKEND] = Backend(addresses)  # on the serving loop: aio channels belong to the loop they start on

    async def close_backend(app: web.Application) -> None:
        await app[BACKEND].close()

    app.on_startup.append(open_backend)
    app.on_cleanup.append(close_backend)
    return app


def reachable_host(host: str) -> str:
    """Where a process on this machine reaches a server bound to `host` (a wildcard: loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::", "[::]") else host.strip("[]")  # noqa: S104 (compared, not bound)


class ConsoleServer:
    """The console listening on `host:port` (0 = any free port) until `stop()`."""

    def __init__(self, addresses: ServiceAddresses, resolver: KeyResolver, secure_cookies: bool = False) -> None:
        self.app = build_app(addresses, resolver, secure_cookies=secure_cookies)
        self._runner: web.AppRunner | None = None
        self.host = "127.0.0.1"
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError:  # the port is taken: release what setup() made (the app's channels)
            await self.stop()
            raise
        self.host = host
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("console_listening", url=self.url)

    @property
    def url(self) -> str:
        host = reachable_host(self.host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
