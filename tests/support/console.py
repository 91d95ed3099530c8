"""Helpers for the web console's tests: signing in over HTTP, the CSRF token of a page, and
applications that wait for review."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
# scores 0.24 under ratio-v1: the policy sends it to an analyst
REVIEW_BODY = {"amount": "50000", "income": "12000", "employment_years": 1}


def csrf_of(html: str) -> str:
    match = CSRF.search(html)
    assert match, "the page has no CSRF token"
    return match.group(1)


async def sign_in(client: httpx.AsyncClient, key: str) -> httpx.Response:
    """Sign in with `key` (the client keeps the cookie); returns the sign-in answer (303)."""
    form = await client.get("/console/sign-in")
    assert form.status_code == 200, form.text
    return await client.post(
        "/console/sign-in",
        data={"api_key": key, "next": "", "csrf_token": csrf_of(form.text)},
    )


async def submit_for_review(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    body = {"applicant_id": f"cust_{uuid.uuid4().hex[:16]}", **REVIEW_BODY}
    response = await client.post("/lending/apply", json=body, headers=headers)
    assert response.status_code == 200, response.text
    application: dict[str, Any] = response.json()
    assert application["status"] == "in_review", application
    return application
