"""What every console page shares: who the caller is (session cookie, open mode or an API key),
the role check against ALLOWED_ROLES, CSRF on every POST, and rendering a page.

Console routes use `ConsoleRoute`. Before FastAPI resolves the route's dependencies (the
app-level `authorize` among them) it reads the session cookie, re-checks the key behind it
(api/web/console/sessions.py), applies `may_call` with the route's operation_id exactly as
`authorize` does for the API, and leaves the principal in `request.state.principal`, where
`authorize` finds it. Without a session it falls back to open mode (no key has ever
existed), or to an API key sent in a header (then `authorize` checks it as for any route),
or sends a person to the sign-in page.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from fastapi import Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, StrictUndefined

from api.service.access import (
    OPEN_MODE_PRINCIPAL,
    PUBLIC_OPERATIONS,
    Authenticator,
    Principal,
    may_call,
)
from api.service.runtime import LedgerService
from api.web.auth import presented_key
from api.web.console.sessions import (
    COOKIE_NAME,
    COOKIE_PATH,
    SECRET_FILE_NAME,
    Session,
    SessionCodec,
    SessionKeys,
    load_or_create_secret,
)
from ledger.events import decimal_to_json

PREFIX = "/console"
STATIC_URL = f"{PREFIX}/static"
STATIC_DIR = Path(__file__).resolve().parent / "static"
SIGN_IN_PATH = f"{PREFIX}/sign-in"

# No inline script or style anywhere: every script and sheet is a file of this package.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True, slots=True)
class NavItem:
    label: str
    href: str
    operation_id: str


NAV = (
    NavItem("Review inbox", f"{PREFIX}/inbox", "console_inbox"),
    NavItem("Ledger", f"{PREFIX}/ledger", "console_ledger"),
    NavItem("Seals and proofs", f"{PREFIX}/seals", "console_seals"),
    NavItem("Operations", f"{PREFIX}/operations", "console_operations"),
)


class ConsoleState:
    """Per app: the session codec (its secret from the data directory) and the key checks."""

    def __init__(self, data_dir: Path) -> None:
        self.codec = SessionCodec(load_or_create_secret(data_dir / SECRET_FILE_NAME))
        self.keys = SessionKeys()


def console_state(request: Request) -> ConsoleState:
    state: ConsoleState | None = getattr(request.app.state, "console", None)
    if state is None:
        service: LedgerService = request.app.state.service
        state = ConsoleState(service.settings.data_dir)
        request.app.state.console = state
    return state


def service_of(request: Request) -> LedgerService:
    service: LedgerService = request.app.state.service
    return service


def allowed(principal: Principal | None, operation_id: str) -> bool:
    if principal is None:
        return False
    return principal.role is None or may_call(principal.role, operation_id)


# --- Rendering ---


def text(value: object) -> str:
    """A value on a page (the template escapes it): None as an em dash, decimals exactly,
    times in UTC to the second."""
    if value is None:
        return "—"
    if isinstance(value, Decimal):
        return decimal_to_json(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)


def age(moment: datetime | None, now: datetime | None = None) -> str:
    if moment is None:
        return "—"
    seconds = max(0, int(((now or datetime.now(UTC)) - moment).total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min"
    return f"{seconds} s"


def ratio(amount: Decimal, income: Decimal) -> str:
    """Loan amount over yearly income, as a percentage with one decimal."""
    if income <= 0:
        return "—"
    return f"{(amount / income * 100).quantize(Decimal('0.1'))} %"


TEMPLATES = Environment(
    loader=PackageLoader("api.web.console", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
TEMPLATES.filters["text"] = text
TEMPLATES.filters["age"] = age
TEMPLATES.globals["static"] = lambda name: f"{STATIC_URL}/{name}"


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    principal: Principal | None = getattr(request.state, "console_principal", None)
    session: Session | None = getattr(request.state, "console_session", None)
    codec = console_state(request).codec
    page = TEMPLATES.get_template(template).render(
        principal=principal,
        open_mode=getattr(request.state, "console_open_mode", False),
        csrf_token=codec.csrf_token(session) if session is not None else "",
        nav=[item for item in NAV if allowed(principal, item.operation_id)],
        path=request.url.path,
        **context,
    )
    return HTMLResponse(page, status_code=status_code, headers=SECURITY_HEADERS)


def error_page(request: Request, status_code: int, title: str, message: str) -> HTMLResponse:
    return render(request, "error.html", status_code, title=title, message=message)


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a console path of this site, never another site."""
    if (
        target
        and target.startswith(PREFIX + "/")
        and "\\" not in target
        and urllib.parse.urlsplit(target).netloc == ""
    ):
        return target
    return PREFIX


# --- The route class ---


Handler = Callable[[Request], Awaitable[Response]]


def set_session_cookie(
    request: Request, response: Response, codec: SessionCodec, session: Session
) -> None:
    remaining = max(1, session.expires - int(datetime.now(UTC).timestamp()))
    response.set_cookie(
        COOKIE_NAME,
        codec.encode(session),
        max_age=remaining,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


async def _guarded(request: Request, operation_id: str, handler: Handler) -> Response:
    state = console_state(request)
    codec = state.codec
    service = service_of(request)
    authenticator: Authenticator = request.app.state.authenticator
    session = codec.decode(request.cookies.get(COOKIE_NAME))
    issue = session is None
    principal: Principal | None = None
    ended = False
    if session is not None and session.signed_in:
        principal = await state.keys.principal(lambda: service.pool, session)
        if principal is None:  # the key was revoked (or changed): the session ends with it
            session, issue, ended = None, True, True
    if session is None:
        session = codec.new()
    open_mode = False
    if principal is None:
        open_mode = await authenticator.open_mode(lambda: service.pool)
        if open_mode:
            principal = OPEN_MODE_PRINCIPAL
    request.state.console_session = session
    request.state.console_principal = principal
    request.state.console_open_mode = open_mode
    response: Response
    if operation_id in PUBLIC_OPERATIONS or (principal is None and presented_key(request)):
        # Public pages, and API clients sending a key (authorize checks it and the role).
        pass
    elif principal is None:
        if request.method == "GET":
            query = {"next": str(request.url.path)}
            if ended:
                query["ended"] = "1"
            response = redirect(f"{SIGN_IN_PATH}?{urllib.parse.urlencode(query)}")
        else:
            response = error_page(request, 401, "Not signed in", "Sign in with an API key first.")
        if issue:
            set_session_cookie(request, response, codec, session)
        return response
    elif not allowed(principal, operation_id):
        role = principal.role.value if principal.role else "open"
        response = error_page(
            request,
            403,
            "Not allowed",
            f"Your role ({role}) may not use this page ({operation_id}).",
        )
        return response
    else:
        request.state.principal = principal  # what `authorize` returns for this request
    if request.method == "POST":
        form = await request.form()
        token = form.get("csrf_token")
        if not codec.csrf_matches(session, token if isinstance(token, str) else None):
            response = error_page(
                request,
                403,
                "Form refused",
                "The form's security token is missing or does not belong to your session "
                "(CSRF protection). Reload the page and send the form again.",
            )
            if issue:
                set_session_cookie(request, response, codec, session)
            return response
    response = await handler(request)
    if issue and "set-cookie" not in response.headers:
        set_session_cookie(request, response, codec, session)
    return response


class ConsoleRoute(APIRoute):
    """An APIRoute that authenticates a person by the console's session (see the module)."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler: Handler = super().get_route_handler()
        operation_id = self.operation_id or ""

        async def guarded(request: Request) -> Response:
            return await _guarded(request, operation_id, handler)

        return guarded


def principal_of(request: Request) -> Principal:
    principal: Principal | None = getattr(request.state, "console_principal", None)
    if principal is None:  # an API client let through by `authorize`
        principal = request.state.principal
    assert principal is not None
    return principal


def query_string(params: Mapping[str, object]) -> str:
    return urllib.parse.urlencode({k: str(v) for k, v in params.items() if v not in (None, "")})
