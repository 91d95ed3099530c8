"""The web console in a real browser: Debian's Chromium driven by Playwright, against a real
uvicorn server on 127.0.0.1 (tests/support/live_server.py) over a real PostgreSQL.

Chromium comes from the distribution (`apt-get install -y chromium`; .ci/run installs it when
missing), never from Playwright's own download. In CI (CI=true) a missing browser fails the
run; elsewhere these tests skip and say how to install it.

Set LEDGER_CONSOLE_SCREENSHOTS=<directory> to write PNGs of the main pages there (that is how
docs/console/ is made).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from api.service.access import Role
from api.service.keystore import create_key
from tests.conftest import MakeDatabase
from tests.support.console import submit_for_review
from tests.support.helpers import wait_until_sequenced
from tests.support.keyed import KeyedApp, keyed_app
from tests.support.live_server import serving

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
EXECUTABLE = str(CHROMIUM) if CHROMIUM.exists() else shutil.which("chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000


def _browser_missing() -> str | None:
    if EXECUTABLE is None:
        return "Chromium is not installed: run `apt-get update && apt-get install -y chromium`"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing: pip install -e '.[test]'"
    return None


_MISSING = _browser_missing()
if _MISSING is not None:
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"CI needs the browser tests to run: {_MISSING}")
    pytest.skip(f"browser tests skipped: {_MISSING}", allow_module_level=True)

from playwright.async_api import (  # noqa: E402 (only once the browser is known to exist)
    Browser,
    BrowserContext,
    Page,
    Route,
    async_playwright,
    expect,
)

SCREENSHOTS = os.environ.get("LEDGER_CONSOLE_SCREENSHOTS")


async def screenshot(page: Page, name: str, full_page: bool = True) -> None:
    if SCREENSHOTS:  # playwright creates the directory
        await page.screenshot(path=f"{SCREENSHOTS}/{name}.png", full_page=full_page)


@dataclass(frozen=True)
class Console:
    keyed: KeyedApp
    url: str
    browser: Browser
    second_analyst_key: str

    def api_headers(self, role: Role) -> dict[str, str]:
        return self.keyed.headers(role)

    async def context(self) -> BrowserContext:
        context = await self.browser.new_context(base_url=self.url)
        context.set_default_timeout(TIMEOUT_MS)
        return context

    async def signed_in(self, key: str) -> tuple[BrowserContext, Page]:
        context = await self.context()
        page = await context.new_page()
        await page.goto("/console/sign-in")
        await page.get_by_label("API key").fill(key)
        await page.get_by_role("button", name="Sign in").click()
        await page.wait_for_url(re.compile(r"/console/(inbox|ledger|operations)"))
        return context, page


@pytest.fixture(scope="module")
async def console(make_database: MakeDatabase) -> AsyncIterator[Console]:
    async with keyed_app(make_database) as keyed, serving(keyed.app) as url:
        async with keyed.pool.acquire() as connection:
            _, second = await create_key(connection, "second-analyst", Role.ANALYST.value)
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=EXECUTABLE,
                args=CHROMIUM_ARGS,
                headless=True,
            )
            try:
                yield Console(keyed, url, browser, second)
            finally:
                await browser.close()


async def seal_now(console: Console) -> int:
    await wait_until_sequenced(console.keyed.pool)
    response = await console.keyed.client.post(
        "/audit/seals", headers=console.api_headers(Role.ADMIN)
    )
    assert response.status_code in (200, 201), response.text
    size: int = response.json()["tree_size"]
    return size


async def test_an_analyst_declines_with_reasons_and_it_leaves_the_inbox(console: Console) -> None:
    keyed = console.keyed
    application = await submit_for_review(keyed.client, console.api_headers(Role.AGENT))
    application_id = application["application_id"]
    context, page = await console.signed_in(keyed.keys[Role.ANALYST])
    try:
        row = page.locator(f'tr[data-application="{application_id}"]')
        await expect(row).to_be_visible()
        await expect(page.locator("#live-state")).to_have_text("(live)")
        shown = int(await page.locator("#pending-count").inner_text())
        # A new application entering review updates the count without a reload.
        await submit_for_review(keyed.client, console.api_headers(Role.AGENT))
        await expect(page.locator("#pending-count")).to_have_text(str(shown + 1))
        await expect(page.locator("#count-changed")).to_be_visible()
        await screenshot(page, "inbox")

        await row.get_by_role("link").click()
        await page.wait_for_url(f"**/console/applications/{application_id}")
        await expect(page.locator("#status")).to_have_text("in_review")
        await page.get_by_label("Decline").check()
        reasons = page.locator('input[name="reason_codes"]')
        await reasons.nth(0).check()
        await reasons.nth(1).check()
        await page.get_by_label("Justification").fill("Income does not support this amount.")
        await screenshot(page, "application")
        await page.get_by_role("button", name="Record decision").click()

        await page.wait_for_url("**/console/inbox?*")
        await expect(page.locator("#flash")).to_contain_text(f"{application_id} declined")
        await expect(page.locator(f'tr[data-application="{application_id}"]')).to_have_count(0)
    finally:
        await context.close()
    events = (
        await keyed.client.get(
            f"/lending/applications/{application_id}/events",
            headers=console.api_headers(Role.AUDITOR),
        )
    ).json()
    review = events[-1]
    assert review["type"] == "ApplicationReviewed"
    assert review["data"]["outcome"] == "declined"
    assert review["data"]["reviewer"] == "analyst:test-analyst"
    assert len(review["data"]["reason_codes"]) == 2


async def test_the_second_of_two_analysts_sees_a_conflict(console: Console) -> None:
    keyed = console.keyed
    application = await submit_for_review(keyed.client, console.api_headers(Role.AGENT))
    url = f"/console/applications/{application['application_id']}"
    first, first_page = await console.signed_in(keyed.keys[Role.ANALYST])
    second, second_page = await console.signed_in(console.second_analyst_key)
    try:
        await first_page.goto(url)
        await second_page.goto(url)
        await first_page.get_by_label("Approve").check()
        await first_page.get_by_label("Justification").fill("Strong history with us.")
        await first_page.get_by_role("button", name="Record decision").click()
        await first_page.wait_for_url("**/console/inbox?*")

        await second_page.get_by_label("Decline").check()
        await second_page.locator('input[name="reason_codes"]').first.check()
        await second_page.get_by_label("Justification").fill("Too large for the income.")
        await second_page.get_by_role("button", name="Record decision").click()
        conflict = second_page.locator("#conflict")
        await expect(conflict).to_be_visible()
        await expect(conflict).to_contain_text("Your decision was NOT recorded")
        await expect(second_page.locator("#status")).to_have_text("approved")
        await expect(second_page.locator(".review")).to_contain_text("analyst:test-analyst")
        # What the second analyst typed is still there, and nothing can be decided now.
        await expect(second_page.locator("#no-actions")).to_contain_text("not in review")
        await screenshot(second_page, "conflict")
    finally:
        await first.close()
        await second.close()
    events = (
        await keyed.client.get(
            f"/lending/applications/{application['application_id']}/events",
            headers=console.api_headers(Role.AUDITOR),
        )
    ).json()
    reviews = [e for e in events if e["type"] == "ApplicationReviewed"]
    assert [r["data"]["outcome"] for r in reviews] == ["approved"]


async def test_maker_checker_shows_as_a_disabled_action_with_the_reason(
    console: Console,
) -> None:
    keyed = console.keyed
    # The analyst submits it (analysts may), so the same analyst may not decide it.
    application = await submit_for_review(keyed.client, console.api_headers(Role.ANALYST))
    context, page = await console.signed_in(keyed.keys[Role.ANALYST])
    try:
        await page.goto(f"/console/applications/{application['application_id']}")
        await expect(page.locator("#no-actions")).to_contain_text("Maker-checker")
        await expect(page.get_by_role("button", name="Record decision")).to_be_disabled()
        for outcome in ("Approve", "Decline"):
            await expect(page.get_by_label(outcome)).to_be_disabled()
        await expect(page.locator("#why-approved")).to_contain_text("Maker-checker")
    finally:
        await context.close()


async def test_an_agent_key_is_refused_the_inbox(console: Console) -> None:
    agent = console.keyed.keys[Role.AGENT]
    context = await console.context()
    try:
        page = await context.new_page()
        await page.goto("/console/sign-in")
        await page.get_by_label("API key").fill(agent)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.locator("#sign-in-error")).to_contain_text(
            "Agent keys cannot use the console"
        )
        await screenshot(page, "sign-in-refused", full_page=False)
        await page.goto("/console/inbox")
        assert "/console/sign-in" in page.url
        # With the key sent as the API expects it: 403 from the same role table.
        answer = await context.request.get(
            "/console/inbox", headers={"Authorization": f"Bearer {agent}"}
        )
        assert answer.status == 403
    finally:
        await context.close()


async def test_a_form_without_its_csrf_token_is_refused(console: Console) -> None:
    keyed = console.keyed
    application = await submit_for_review(keyed.client, console.api_headers(Role.AGENT))
    context, page = await console.signed_in(keyed.keys[Role.ANALYST])
    try:
        answer = await context.request.post(
            f"/console/applications/{application['application_id']}/decision",
            form={
                "outcome": "approved",
                "justification": "no token",
                "expected_version": str(application["stream_version"]),
            },
            max_redirects=0,
        )
        assert answer.status == 403
        assert "CSRF" in await answer.text()
        await page.goto(f"/console/applications/{application['application_id']}")
        await expect(page.locator("#status")).to_have_text("in_review")
    finally:
        await context.close()


def _alter(body: dict[str, Any], how: str) -> dict[str, Any]:
    altered: dict[str, Any] = json.loads(json.dumps(body))
    if how == "event":
        altered["event"]["data"]["amount"] = "1.00"
    else:
        first = altered["audit_path"][0]
        altered["audit_path"][0] = ("0" if first[0] != "0" else "1") + first[1:]
    return altered


def tampering(how: str) -> Callable[[Route], Awaitable[None]]:
    """A route handler that alters the proof in flight (one parameter: Playwright passes the
    request too to a handler that takes two)."""

    async def tamper(route: Route) -> None:
        response = await route.fetch()
        body = _alter(await response.json(), how)
        await route.fulfill(response=response, body=json.dumps(body))

    return tamper


async def test_an_auditor_verifies_a_proof_and_the_seal_in_the_page(console: Console) -> None:
    keyed = console.keyed
    first = await submit_for_review(keyed.client, console.api_headers(Role.AGENT))
    first_size = await seal_now(console)
    await submit_for_review(keyed.client, console.api_headers(Role.AGENT))
    await seal_now(console)
    context, page = await console.signed_in(keyed.keys[Role.AUDITOR])
    try:
        await screenshot(page, "ledger")
        stream = f"loan-application-{first['application_id']}"
        await page.goto(f"/console/ledger?stream={stream}")
        await page.get_by_role("link", name="details and proof").first.click()
        await page.wait_for_url("**/console/ledger/events/*")
        await page.get_by_role("button", name="Verify inclusion").click()
        result = page.locator("#inclusion-result .summary")
        await expect(result).to_have_attribute("data-result", "passed")
        await expect(page.locator("#inclusion-result")).to_contain_text(
            "passed: Audit path leads from the event to the signed root"
        )
        await expect(page.locator("#inclusion-result")).to_contain_text("The server's claim")
        await screenshot(page, "event-proof")

        for how, failed_check in (
            ("event", "FAILED: Event hash recomputed from its content"),
            ("path", "FAILED: Audit path leads from the event to the signed root"),
        ):
            await page.route("**/proof.json", tampering(how))
            await page.get_by_role("button", name="Verify inclusion").click()
            await expect(result).to_have_attribute("data-result", "failed")
            await expect(page.locator("#inclusion-result")).to_contain_text(failed_check)
            await page.unroute("**/proof.json")

        await page.goto("/console/seals")
        await page.get_by_role("button", name="Verify the seal's signature").click()
        await expect(page.locator("#seal-result .summary")).to_have_attribute(
            "data-result", "passed"
        )
        await expect(page.locator("#seal-result")).to_contain_text("passed: Seal")
        await page.get_by_label("Earlier seal (tree size)").select_option(str(first_size))
        await page.get_by_role("button", name="Verify consistency").click()
        await expect(page.locator("#consistency-result .summary")).to_have_attribute(
            "data-result", "passed"
        )
        await screenshot(page, "seals")

        # A signature altered in flight fails in the page.
        async def bad_signature(route: Route) -> None:
            response = await route.fetch()
            body = await response.json()
            body["signature"] = ("0" if body["signature"][0] != "0" else "1") + body["signature"][
                1:
            ]
            await route.fulfill(response=response, body=json.dumps(body))

        await page.route("**/seals/latest.json", bad_signature)
        await page.get_by_role("button", name="Verify the seal's signature").click()
        await expect(page.locator("#seal-result .summary")).to_have_attribute(
            "data-result", "failed"
        )
        await expect(page.locator("#seal-result")).to_contain_text("FAILED: Seal")
    finally:
        await context.close()


async def test_the_ledger_tail_shows_new_events_live(console: Console) -> None:
    keyed = console.keyed
    context, page = await console.signed_in(keyed.keys[Role.AUDITOR])
    try:
        await page.get_by_role("button", name="Follow live").click()
        await expect(page.locator("#tail-state")).to_contain_text("Following")
        application = await submit_for_review(keyed.client, console.api_headers(Role.AGENT))
        row = page.locator("#ledger-rows tr.new", has_text=application["application_id"])
        await expect(row).to_have_count(3)  # submitted, scored, decided
    finally:
        await context.close()


async def test_an_admin_sees_operations_and_a_new_key_once(console: Console) -> None:
    context, page = await console.signed_in(console.keyed.keys[Role.ADMIN])
    try:
        await expect(page.locator("#log-head")).not_to_have_text("")
        await page.get_by_label("Role").select_option("auditor")
        await page.get_by_label("Holder's name").fill("browser-made")
        await page.get_by_role("button", name="Create key").click()
        key = await page.get_by_label("New API key").input_value()
        assert key.startswith("ll_")
        await screenshot(page, "operations")
        await page.goto("/console/operations")
        await expect(page.locator("#keys")).to_contain_text("browser-made")
        assert key not in await page.content()
    finally:
        await context.close()


@pytest.mark.parametrize(
    ("path", "ready"),
    [("/docs", ".swagger-ui .info .title"), ("/redoc", "h1")],
)
async def test_docs_render_with_the_network_blocked(
    console: Console, path: str, ready: str
) -> None:
    context = await console.context()
    blocked: list[str] = []

    async def loopback_only(route: Route) -> None:
        host = urlsplit(route.request.url).hostname
        if host == "127.0.0.1":
            await route.continue_()
        else:
            blocked.append(route.request.url)
            await route.abort()

    await context.route("**/*", loopback_only)
    try:
        page = await context.new_page()
        await page.goto(path)
        await expect(page.locator(ready).first).to_contain_text("lending-ledger")
        await page.wait_for_load_state("networkidle")  # whatever it loads late, too
        await screenshot(page, path.strip("/"), full_page=False)
    finally:
        await context.close()
    assert not [url for url in blocked if not url.startswith("data:")], blocked
