"""The web console over HTTP (no browser): sessions, CSRF, roles, open mode, revocation, and
/docs and /redoc served from the package. The browser flows are in
tests/system/test_console_browser.py."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from api.service.access import Role
from api.service.keystore import create_key
from api.web.console.sessions import COOKIE_NAME
from tests.conftest import MakeDatabase
from tests.support.console import csrf_of, sign_in, submit_for_review
from tests.support.keyed import KeyedApp, keyed_app


@pytest.fixture(scope="module")
async def keyed(make_database: MakeDatabase) -> AsyncIterator[KeyedApp]:
    async with keyed_app(make_database) as app:
        yield app


def console_client(keyed: KeyedApp) -> httpx.AsyncClient:
    """A browser-like client of its own (its own cookie jar)."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=keyed.app), base_url="http://ledger.test"
    )


async def test_signing_in_gives_a_strict_httponly_cookie_and_the_role_home(
    keyed: KeyedApp,
) -> None:
    async with console_client(keyed) as browser:
        answer = await sign_in(browser, keyed.keys[Role.ANALYST])
        assert answer.status_code == 303, answer.text
        assert answer.headers["location"] == "/console/inbox"
        cookie = answer.headers["set-cookie"].lower()
        assert f"{COOKIE_NAME}=" in cookie
        assert "httponly" in cookie
        assert "samesite=strict" in cookie
        assert "path=/console" in cookie
        assert keyed.keys[Role.ANALYST] not in answer.headers["set-cookie"]
        inbox = await browser.get("/console/inbox")
        assert inbox.status_code == 200
        assert "analyst:test-analyst" in inbox.text
        assert "Open development mode" not in inbox.text
        assert "script-src 'self'" in inbox.headers["content-security-policy"]
        for role, home in ((Role.AUDITOR, "/console/ledger"), (Role.ADMIN, "/console/operations")):
            async with console_client(keyed) as other:
                assert (await sign_in(other, keyed.keys[role])).headers["location"] == home


async def test_wrong_revoked_and_agent_keys_do_not_sign_in(keyed: KeyedApp) -> None:
    async with console_client(keyed) as browser:
        wrong = await sign_in(browser, "ll_0123456789abcdef_" + "x" * 43)
        assert wrong.status_code == 401
        assert "Not signed in" in wrong.text
        revoked = await sign_in(browser, keyed.revoked_key)
        assert revoked.status_code == 401
        assert "revoked" in revoked.text
        agent = await sign_in(browser, keyed.keys[Role.AGENT])
        assert agent.status_code == 403
        assert "Agent keys cannot use the console" in agent.text
        # Still not signed in: pages send a person to the sign-in form.
        page = await browser.get("/console/inbox")
        assert page.status_code == 303
        assert page.headers["location"].startswith("/console/sign-in?next=%2Fconsole%2Finbox")


async def test_roles_follow_the_table(keyed: KeyedApp) -> None:
    async with console_client(keyed) as browser:
        await sign_in(browser, keyed.keys[Role.ANALYST])
        assert (await browser.get("/console/ledger")).status_code == 403
        assert (await browser.get("/console/operations")).status_code == 403
        assert (await browser.get("/console/audit/public-key.json")).status_code == 403
    async with console_client(keyed) as browser:
        await sign_in(browser, keyed.keys[Role.AUDITOR])
        assert (await browser.get("/console/ledger")).status_code == 200
        assert (await browser.get("/console/operations")).status_code == 403
    # An API client's key is checked by the app's own `authorize`: an agent gets 403.
    refused = await keyed.client.get("/console/inbox", headers=keyed.headers(Role.AGENT))
    assert refused.status_code == 403
    assert refused.json()["operation_id"] == "console_inbox"


async def test_a_form_without_the_sessions_csrf_token_is_refused(keyed: KeyedApp) -> None:
    application = await submit_for_review(keyed.client, keyed.headers(Role.AGENT))
    url = f"/console/applications/{application['application_id']}"
    decision = {
        "outcome": "approved",
        "justification": "fine",
        "expected_version": str(application["stream_version"]),
    }
    async with console_client(keyed) as browser, console_client(keyed) as other:
        await sign_in(browser, keyed.keys[Role.ANALYST])
        await sign_in(other, keyed.keys[Role.ANALYST])
        others_token = csrf_of((await other.get(url)).text)
        before = await keyed.writes()
        for token in (None, "", others_token, "forged"):
            form = dict(decision) if token is None else {**decision, "csrf_token": token}
            answer = await browser.post(f"{url}/decision", data=form)
            assert answer.status_code == 403, (token, answer.text)
            assert "CSRF" in answer.text
        assert await keyed.writes() == before
        page = await browser.get(url)
        assert "in_review" in page.text
        answer = await browser.post(
            f"{url}/decision", data={**decision, "csrf_token": csrf_of(page.text)}
        )
        assert answer.status_code == 303, answer.text


async def test_a_forged_or_altered_cookie_is_no_session(keyed: KeyedApp) -> None:
    async with console_client(keyed) as browser:
        await sign_in(browser, keyed.keys[Role.ANALYST])
        cookie = browser.cookies[COOKIE_NAME]
        payload, tag = cookie.split(".")
        body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        body["role"] = "admin"
        forged = base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")
        browser.cookies.clear()
        browser.cookies.set(COOKIE_NAME, f"{forged}.{tag}", domain="ledger.test", path="/console")
        answer = await browser.get("/console/operations")
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/console/sign-in")


async def test_revoking_the_key_ends_its_sessions(keyed: KeyedApp) -> None:
    async with keyed.pool.acquire() as connection:
        record, key = await create_key(connection, "short-lived", "analyst")
    async with console_client(keyed) as analyst, console_client(keyed) as admin:
        await sign_in(analyst, key)
        assert (await analyst.get("/console/inbox")).status_code == 200
        await sign_in(admin, keyed.keys[Role.ADMIN])
        page = await admin.get("/console/operations")
        assert record.id in page.text
        revoked = await admin.post(
            f"/console/operations/keys/{record.id}/revoke", data={"csrf_token": csrf_of(page.text)}
        )
        assert revoked.status_code == 303
        ended = await analyst.get("/console/inbox")
        assert ended.status_code == 303
        assert "ended=1" in ended.headers["location"]


async def test_an_admin_creates_a_key_shown_once(keyed: KeyedApp) -> None:
    async with console_client(keyed) as admin:
        await sign_in(admin, keyed.keys[Role.ADMIN])
        page = await admin.get("/console/operations")
        created = await admin.post(
            "/console/operations/keys",
            data={"role": "auditor", "name": "new-auditor", "csrf_token": csrf_of(page.text)},
        )
        assert created.status_code == 201
        assert created.headers["cache-control"] == "no-store"
        key = re.search(r'id="new-key" value="(ll_[^"]+)"', created.text)
        assert key, created.text
        again = await admin.get("/console/operations")
        assert key.group(1) not in again.text
    async with console_client(keyed) as auditor:
        assert (await sign_in(auditor, key.group(1))).headers["location"] == "/console/ledger"


async def test_open_mode_needs_no_sign_in_and_says_so(client: httpx.AsyncClient) -> None:
    for path in ("/console/inbox", "/console/ledger", "/console/seals", "/console/operations"):
        page = await client.get(path)
        assert page.status_code == 200, (path, page.text)
        assert "Open development mode" in page.text, path


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_docs_use_only_the_packages_own_assets(client: httpx.AsyncClient, path: str) -> None:
    page = await client.get(path)
    assert page.status_code == 200
    assert re.search(r"https?://", page.text) is None, page.text
    assets = re.findall(r'(?:src|href)="(/console/static/[^"]+)"', page.text)
    assert len(assets) >= 2
    for asset in assets:
        served = await client.get(asset)
        assert served.status_code == 200, asset
        assert len(served.content) > 500, asset


def test_vendored_files_are_listed_with_their_origin() -> None:
    vendor = Path(__file__).resolve().parents[2] / "api" / "web" / "console" / "static" / "vendor"
    readme = (vendor / "README.md").read_text(encoding="utf-8")
    for path in vendor.iterdir():
        if path.name != "README.md":
            assert path.name in readme, f"{path.name} is not described in vendor/README.md"
