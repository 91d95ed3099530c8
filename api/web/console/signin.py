"""Signing in with an API key, and out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request, Response

from api.service.access import Authenticator, Role
from api.service.errors import NotAuthenticated
from api.service.keystore import key_id_of
from api.web.console.base import (
    PREFIX,
    ConsoleRoute,
    console_state,
    principal_of,
    redirect,
    render,
    safe_next,
    service_of,
    set_session_cookie,
)
from api.web.console.sessions import COOKIE_NAME, COOKIE_PATH

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

HOMES = {
    Role.ANALYST: f"{PREFIX}/inbox",
    Role.AUDITOR: f"{PREFIX}/ledger",
    Role.ADMIN: f"{PREFIX}/operations",
}


@router.get(f"{PREFIX}/sign-in", operation_id="console_sign_in_form")
async def sign_in_form(
    request: Request,
    next: Annotated[str | None, Query(max_length=500)] = None,
    ended: Annotated[str | None, Query(max_length=10)] = None,
) -> Response:
    message = (
        "Your session ended: the API key it was opened with was revoked or changed."
        if ended
        else None
    )
    return render(request, "sign_in.html", next=safe_next(next), error=message)


@router.post(f"{PREFIX}/sign-in", operation_id="console_sign_in")
async def sign_in(
    request: Request,
    api_key: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    """Checks the key exactly as the API does (same cache, same failure log), then issues a
    new session (a new id, so a token from before sign-in is worth nothing after it)."""
    service = service_of(request)
    authenticator: Authenticator = request.app.state.authenticator
    remote = request.client.host if request.client else None
    key = api_key.strip()
    target = safe_next(next)
    try:
        if not key:
            raise NotAuthenticated("enter an API key", key_sent=False)
        principal = await authenticator.principal(lambda: service.pool, key, remote)
    except NotAuthenticated as refused:
        return render(
            request, "sign_in.html", 401, next=target, error=f"Not signed in: {refused.detail}."
        )
    key_id = key_id_of(key)
    if principal.role is None or key_id is None:  # open mode answered an unknown key
        return render(
            request,
            "sign_in.html",
            401,
            next=target,
            error="Not signed in: the key is not valid.",
        )
    if principal.role is Role.AGENT:
        return render(
            request,
            "sign_in.html",
            403,
            next=target,
            error="Agent keys cannot use the console: it is for analysts, auditors and "
            "admins. Agents use the HTTP API.",
        )
    state = console_state(request)
    session = state.codec.new(key_id, principal)
    state.keys.forget(key_id)  # a key revoked and re-checked a moment ago is read afresh
    response = redirect(target if target != PREFIX else HOMES[principal.role])
    set_session_cookie(request, response, state.codec, session)
    return response


@router.post(f"{PREFIX}/sign-out", operation_id="console_sign_out")
async def sign_out(request: Request) -> Response:
    response = redirect(f"{PREFIX}/sign-in")
    response.delete_cookie(COOKIE_NAME, path=COOKIE_PATH, httponly=True, samesite="strict")
    return response


@router.get(PREFIX, operation_id="console_home")
async def home(request: Request) -> Response:
    principal = principal_of(request)
    if principal.role is None:
        return redirect(f"{PREFIX}/inbox")
    return redirect(HOMES.get(principal.role, f"{PREFIX}/sign-in"))
