"""API keys: format, hashing, storage, verification, 401/403 over HTTP, open mode, the
production refusal, failed-authentication logging, the admin endpoints and the CLI.

The role-by-endpoint matrix is in test_auth_matrix.py; the database role in
test_db_role.py."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given, settings
from hypothesis import strategies as st

from api.cli.main import main
from api.service.access import (
    OPEN_MODE_PRINCIPAL,
    Authenticator,
    FailedAuthentications,
    Principal,
    Role,
    StartupRefused,
    may_call,
)
from api.service.errors import NotAuthenticated
from api.service.keystore import (
    KEY_PATTERN,
    create_key,
    find_key,
    generate_key,
    hash_matches,
    key_hash,
    key_id_of,
    list_keys,
    revoke_key,
)
from api.service.settings import Settings
from api.web.app import create_app
from ledger.db import connect, create_pool
from ledger.errors import InvalidCommand
from tests.conftest import FAST_SEQUENCER, MakeDatabase, new_applicant
from tests.support.helpers import JSON_HEADERS, assert_problem
from tests.support.keyed import KeyedApp, keyed_app


def apply_body() -> dict[str, Any]:
    return {
        "applicant_id": new_applicant(),
        "amount": "5000",
        "income": "90000",
        "employment_years": 6,
    }


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
async def keyed(make_database: MakeDatabase) -> AsyncIterator[KeyedApp]:
    async with keyed_app(make_database) as running:
        yield running


@pytest.fixture
async def fresh_pool(make_database: MakeDatabase) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(await make_database(), min_size=1, max_size=2)
    yield pool
    await pool.close()


# --- The key format and its hash ---


def test_a_new_key_has_the_documented_format_and_256_random_bits() -> None:
    keys = [generate_key() for _ in range(200)]
    for key_id, key in keys:
        match = KEY_PATTERN.fullmatch(key)
        assert match is not None, key
        assert match.group("id") == key_id
        assert len(match.group("secret")) == 43  # 32 bytes, base64url without padding
    assert len({key for _, key in keys}) == len({key_id for key_id, _ in keys}) == 200


def test_the_hash_is_sha256_of_the_whole_key_and_is_compared_exactly() -> None:
    _, key = generate_key()
    digest = key_hash(key)
    assert len(digest) == 32
    assert hash_matches(key_hash(key), digest)
    other_id, _ = generate_key()
    rebound = key.replace(key_id_of(key) or "", other_id)  # same secret, another id
    assert not hash_matches(key_hash(rebound), digest)


@settings(max_examples=60)
@given(position=st.integers(min_value=0, max_value=62), replacement=st.sampled_from("aZ09-_"))
def test_changing_any_character_of_a_key_breaks_it(position: int, replacement: str) -> None:
    _, key = generate_key()
    altered = key[:position] + replacement + key[position + 1 :]
    if altered != key:
        assert not hash_matches(key_hash(altered), key_hash(key))


@settings(max_examples=100)
@given(text=st.text(max_size=90))
def test_only_well_formed_keys_have_an_id(text: str) -> None:
    key_id = key_id_of(text)
    assert (key_id is not None) == bool(KEY_PATTERN.fullmatch(text))
    if key_id is not None:
        assert text.startswith(f"ll_{key_id}_")


def test_admin_may_call_everything_and_unknown_operations_are_admin_only() -> None:
    assert may_call(Role.ADMIN, "an_operation_nobody_listed")
    assert may_call(Role.ADMIN, None)
    for role in (Role.AGENT, Role.ANALYST, Role.AUDITOR):
        assert not may_call(role, "an_operation_nobody_listed")
        assert not may_call(role, None)
    assert may_call(Role.AGENT, "submit_application")
    assert not may_call(Role.AUDITOR, "submit_application")
    assert Principal("ana", Role.ANALYST).actor == "analyst:ana"
    assert OPEN_MODE_PRINCIPAL.actor == "anonymous"


# --- The store ---


async def test_keys_are_stored_hashed_and_listed_without_secrets(fresh_pool: asyncpg.Pool) -> None:
    async with fresh_pool.acquire() as connection:
        record, key = await create_key(connection, "agent-7", "agent")
        row = await connection.fetchrow("SELECT * FROM api_keys WHERE id = $1", record.id)
        listed = await list_keys(connection)
        stored = await find_key(connection, record.id)
    assert row is not None
    assert stored is not None
    secret = key.split("_", 2)[2]  # ll_<id>_<secret>; the secret may hold "_" itself
    assert bytes(row["hash"]) == key_hash(key) == stored.hash
    for value in row.values():
        assert secret not in str(value)
        assert not (isinstance(value, bytes) and secret.encode() in value)
    assert [(k.id, k.name, k.role, k.revoked_at) for k in listed] == [
        (record.id, "agent-7", "agent", None)
    ]
    assert not hasattr(listed[0], "hash")


async def test_revoking_is_idempotent_and_unknown_keys_are_reported(
    fresh_pool: asyncpg.Pool,
) -> None:
    async with fresh_pool.acquire() as connection:
        record, _ = await create_key(connection, "short-lived", "auditor")
        first = await revoke_key(connection, record.id)
        again = await revoke_key(connection, record.id)
        assert await revoke_key(connection, "0123456789abcdef") is None
        assert await revoke_key(connection, "not-an-id") is None
    assert first is not None
    assert again is not None
    assert first.revoked_at is not None
    assert again.revoked_at == first.revoked_at


async def test_names_and_roles_are_checked(fresh_pool: asyncpg.Pool) -> None:
    async with fresh_pool.acquire() as connection:
        for bad in ("", "has space", "x" * 65, "ünïcode", "new\nline"):
            with pytest.raises(InvalidCommand):
                await create_key(connection, bad, "agent")
        with pytest.raises(asyncpg.CheckViolationError):
            await create_key(connection, "root", "root")
        for role in Role:  # the table's CHECK and the Role enum agree
            await create_key(connection, f"n-{role}", role.value)


# --- Verification, the cache and open mode (real database, fake clock) ---


async def test_a_verified_key_is_cached_for_the_ttl_then_checked_again(
    fresh_pool: asyncpg.Pool,
) -> None:
    clock = FakeClock()
    authenticator = Authenticator(open_mode_allowed=False, ttl=5.0, clock=clock)
    async with fresh_pool.acquire() as connection:
        record, key = await create_key(connection, "cached", "analyst")
    principal = await authenticator.principal(lambda: fresh_pool, key, "10.0.0.1")
    assert principal == Principal("cached", Role.ANALYST)
    async with fresh_pool.acquire() as connection:
        await revoke_key(connection, record.id)
    clock.now += 4.9  # still trusted: the documented revocation delay
    assert await authenticator.principal(lambda: fresh_pool, key, None) == principal
    clock.now += 0.2
    with pytest.raises(NotAuthenticated, match="revoked"):
        await authenticator.principal(lambda: fresh_pool, key, None)


async def test_revocation_in_this_process_takes_effect_at_once(fresh_pool: asyncpg.Pool) -> None:
    authenticator = Authenticator(open_mode_allowed=False, clock=FakeClock())
    async with fresh_pool.acquire() as connection:
        record, key = await create_key(connection, "forgotten", "agent")
    await authenticator.principal(lambda: fresh_pool, key, None)
    async with fresh_pool.acquire() as connection:
        await revoke_key(connection, record.id)
    authenticator.forget(record.id)
    with pytest.raises(NotAuthenticated):
        await authenticator.principal(lambda: fresh_pool, key, None)


async def test_failures_are_not_cached(fresh_pool: asyncpg.Pool) -> None:
    authenticator = Authenticator(open_mode_allowed=False, clock=FakeClock())
    key_id, key = generate_key()
    with pytest.raises(NotAuthenticated):
        await authenticator.principal(lambda: fresh_pool, key, None)
    async with fresh_pool.acquire() as connection:  # the same key, now stored
        await connection.execute(
            "INSERT INTO api_keys (id, name, role, hash) VALUES ($1, 'late', 'agent', $2)",
            key_id,
            key_hash(key),
        )
    assert (await authenticator.principal(lambda: fresh_pool, key, None)).name == "late"


async def test_open_mode_lasts_until_a_key_exists_and_never_comes_back(
    fresh_pool: asyncpg.Pool,
) -> None:
    clock = FakeClock()
    authenticator = Authenticator(open_mode_allowed=True, ttl=5.0, clock=clock)
    assert await authenticator.principal(lambda: fresh_pool, None, None) is OPEN_MODE_PRINCIPAL
    async with fresh_pool.acquire() as connection:
        record, _ = await create_key(connection, "first", "admin")
    clock.now += 4.0  # open mode's answer is cached for the ttl too
    assert await authenticator.principal(lambda: fresh_pool, None, None) is OPEN_MODE_PRINCIPAL
    clock.now += 1.5
    with pytest.raises(NotAuthenticated, match="needs an API key"):
        await authenticator.principal(lambda: fresh_pool, None, None)
    async with fresh_pool.acquire() as connection:
        await revoke_key(connection, record.id)
    clock.now += 60
    with pytest.raises(NotAuthenticated):  # revoking every key locks, it does not open
        await authenticator.principal(lambda: fresh_pool, None, None)


async def test_production_never_runs_open(fresh_pool: asyncpg.Pool) -> None:
    authenticator = Authenticator(open_mode_allowed=False, clock=FakeClock())
    with pytest.raises(NotAuthenticated):
        await authenticator.principal(lambda: fresh_pool, None, None)


# --- Failed authentications in the log ---


def failure_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name == "api.service.access" and "failed authentication" in record.getMessage()
    ]


async def test_failed_authentications_are_logged_at_most_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    failures = FailedAuthentications(interval=60.0, clock=clock)
    caplog.set_level(logging.WARNING, logger="api.service.access")
    failures.record("wrong key", "10.0.0.1", "00000000000000aa")
    assert len(failure_lines(caplog)) == 1  # the first one at once
    for n in range(200):
        clock.now += 0.1
        failures.record("wrong key", f"10.0.1.{n % 30}", f"{n:016x}")
    assert len(failure_lines(caplog)) == 1  # then quiet for the interval...
    clock.now += 60
    failures.flush()  # ...at whose end the timer reports the rest
    lines = failure_lines(caplog)
    assert len(lines) == 2
    summary = lines[1].getMessage()
    assert summary.startswith("200 failed authentication(s) (wrong key: 200)")
    assert "10.0.1.0" in summary
    assert f"{0:016x}" in summary
    assert summary.count("10.0.1.") <= FailedAuthentications.MAX_LISTED
    failures.flush()
    assert len(failure_lines(caplog)) == 2  # nothing pending, nothing logged


async def test_the_quiet_interval_ends_with_a_summary_even_without_more_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="api.service.access")
    failures = FailedAuthentications(interval=0.05)
    failures.record("no key", "10.0.0.9", None)
    failures.record("no key", "10.0.0.9", None)
    deadline = time.monotonic() + 10
    while len(failure_lines(caplog)) < 2:  # the timer fires on its own
        assert time.monotonic() < deadline, "the pending failure was never reported"
        await asyncio.sleep(0.02)
    assert failure_lines(caplog)[1].getMessage().startswith("1 failed authentication(s)")


async def test_http_failures_are_logged_rate_limited_and_never_with_the_secret(
    keyed: KeyedApp, caplog: pytest.LogCaptureFixture
) -> None:
    failures = keyed.app.state.authenticator.failures
    failures.flush()
    caplog.set_level(logging.WARNING, logger="api.service.access")
    caplog.clear()
    key_id = key_id_of(keyed.keys[Role.AGENT])
    wrong = f"ll_{key_id}_{'A' * 43}"
    for _ in range(30):
        response = await keyed.client.get("/events", headers={"authorization": f"Bearer {wrong}"})
        assert response.status_code == 401
    failures.flush()
    lines = failure_lines(caplog)
    assert 1 <= len(lines) <= 2
    text = " ".join(line.getMessage() for line in lines)
    assert sum(int(count) for count in re.findall(r"(\d+) failed authentication", text)) == 30
    assert key_id is not None
    assert key_id in text
    assert "127.0.0.1" in text
    for secret in ("A" * 43, *(key.split("_", 2)[2] for key in keyed.keys.values())):
        assert secret not in caplog.text


# --- 401 and 403 over HTTP ---


async def test_every_kind_of_bad_key_gets_401_and_writes_nothing(keyed: KeyedApp) -> None:
    agent_id = key_id_of(keyed.keys[Role.AGENT])
    _, unknown_key = generate_key()
    cases = {
        "missing": {},
        "empty bearer": {"authorization": "Bearer "},
        "other scheme": {"authorization": "Basic YWxhZGRpbjpvcGVuc2VzYW1l"},
        "malformed": {"authorization": "Bearer not-a-key"},
        "unknown id": {"authorization": f"Bearer {unknown_key}"},
        "wrong secret": {"authorization": f"Bearer ll_{agent_id}_{'b' * 43}"},
        "revoked": {"authorization": f"Bearer {keyed.revoked_key}"},
        "wrong x-api-key": {"x-api-key": f"ll_{agent_id}_{'c' * 43}"},
    }
    before = await keyed.writes()
    for case, headers in cases.items():
        response = await keyed.client.post(
            "/lending/apply", json=apply_body(), headers={**headers, "idempotency-key": case}
        )
        problem = assert_problem(response, 401, "unauthorized")
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith("Bearer"), case
        key_sent = case not in ("missing", "empty bearer", "other scheme")
        assert ('error="invalid_token"' in challenge) == key_sent, case
        assert "secret" not in problem["detail"]
    assert await keyed.writes() == before


async def test_a_revoked_key_is_told_so(keyed: KeyedApp) -> None:
    response = await keyed.client.get(
        "/events", headers={"authorization": f"Bearer {keyed.revoked_key}"}
    )
    assert "revoked" in assert_problem(response, 401)["detail"]


async def test_a_role_without_the_right_gets_403_naming_role_and_operation(
    keyed: KeyedApp,
) -> None:
    cases = [
        (Role.AUDITOR, "POST", "/lending/apply", apply_body(), "submit_application"),
        (Role.AGENT, "GET", "/events", None, "get_event_feed"),
        (Role.ANALYST, "GET", "/admin/keys", None, "list_api_keys"),
        (
            Role.AGENT,
            "POST",
            "/admin/keys",
            {"role": "admin", "name": "escalate"},
            "create_api_key",
        ),
    ]
    before = await keyed.writes()
    for role, method, path, body, operation_id in cases:
        response = await keyed.client.request(method, path, json=body, headers=keyed.headers(role))
        problem = assert_problem(response, 403, "forbidden")
        assert problem["role"] == role.value
        assert problem["operation_id"] == operation_id
        assert role.value in problem["detail"]
        assert operation_id in problem["detail"]
    assert await keyed.writes() == before


async def test_keys_work_in_either_header_and_the_actor_comes_from_the_key(
    keyed: KeyedApp,
) -> None:
    key = keyed.keys[Role.AGENT]
    for headers in ({"authorization": f"Bearer {key}"}, {"authorization": f"bearer {key}"}):
        created = await keyed.client.post("/lending/apply", json=apply_body(), headers=headers)
        assert created.status_code == 200, created.text
    via_header = await keyed.client.post(
        "/lending/apply", json=apply_body(), headers={"x-api-key": key}
    )
    assert via_header.status_code == 200, via_header.text
    events = await keyed.client.get(
        f"/lending/applications/{via_header.json()['application_id']}/events",
        headers={"x-api-key": keyed.keys[Role.AUDITOR]},
    )
    assert events.status_code == 200
    assert {event["metadata"]["actor"] for event in events.json()} == {"agent:test-agent"}


async def test_health_probes_need_no_key_and_ignore_a_bad_one(keyed: KeyedApp) -> None:
    for headers in ({}, {"authorization": "Bearer nonsense"}):
        assert (await keyed.client.get("/healthz", headers=headers)).status_code == 200
        assert (await keyed.client.get("/readyz", headers=headers)).status_code == 200
    assert_problem(await keyed.client.get("/no/such/path"), 404)


async def test_authentication_comes_before_any_word_about_the_body(keyed: KeyedApp) -> None:
    """FastAPI rejects unparseable JSON before dependencies run; the caller must still hear
    401/403 first, and only an allowed caller learns what is wrong with the body."""
    broken = b'{"applicant_id": '
    without = await keyed.client.post("/lending/apply", content=broken, headers=JSON_HEADERS)
    assert_problem(without, 401)
    auditor = await keyed.client.post(
        "/lending/apply", content=broken, headers={**JSON_HEADERS, **keyed.headers(Role.AUDITOR)}
    )
    assert_problem(auditor, 403)
    agent = await keyed.client.post(
        "/lending/apply", content=broken, headers={**JSON_HEADERS, **keyed.headers(Role.AGENT)}
    )
    assert_problem(agent, 422, "validation-error")
    invalid = {**apply_body(), "amount": "-5"}
    assert_problem(await keyed.client.post("/lending/apply", json=invalid), 401)
    wrong_type = await keyed.client.post(
        "/lending/apply", content=b"amount=5", headers={"content-type": "text/plain"}
    )
    assert_problem(wrong_type, 401)  # not 415: the media type check is a later dependency


# --- The admin endpoints ---


async def test_admins_create_list_and_revoke_keys_over_http(keyed: KeyedApp) -> None:
    admin = keyed.headers(Role.ADMIN)
    created = await keyed.client.post(
        "/admin/keys", json={"role": "analyst", "name": "ana"}, headers=admin
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert set(body) == {"id", "name", "role", "created_at", "revoked_at", "key"}
    assert (body["role"], body["name"], body["revoked_at"]) == ("analyst", "ana", None)
    assert key_id_of(body["key"]) == body["id"]
    new_key = {"authorization": f"Bearer {body['key']}"}
    queue = await keyed.client.get("/lending/reviews", headers=new_key)
    assert queue.status_code == 200, queue.text

    listed = await keyed.client.get("/admin/keys", headers=admin)
    assert listed.status_code == 200
    entry = next(item for item in listed.json() if item["id"] == body["id"])
    assert set(entry) == {"id", "name", "role", "created_at", "revoked_at"}
    assert body["key"].split("_", 2)[2] not in listed.text

    revoked = await keyed.client.delete(f"/admin/keys/{body['id']}", headers=admin)
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    # This worker forgets it at once; other workers within the cache ttl.
    assert_problem(await keyed.client.get("/lending/reviews", headers=new_key), 401)
    again = await keyed.client.delete(f"/admin/keys/{body['id']}", headers=admin)
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]
    for missing in ("0123456789abcdef", "nope"):
        assert_problem(await keyed.client.delete(f"/admin/keys/{missing}", headers=admin), 404)


async def test_bad_key_requests_are_422_and_write_nothing(keyed: KeyedApp) -> None:
    before = await keyed.writes()
    for body in (
        {"role": "root", "name": "x"},
        {"role": "agent", "name": "has space"},
        {"role": "agent"},
        {"role": "agent", "name": "x", "key": "ll_mine"},
    ):
        response = await keyed.client.post(
            "/admin/keys", json=body, headers=keyed.headers(Role.ADMIN)
        )
        assert_problem(response, 422, "validation-error")
    assert await keyed.writes() == before


# --- Start-up: open mode, production ---


async def test_open_mode_says_so_loudly_at_start_up(
    make_database: MakeDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="api.service.access")
    url = await make_database()
    app = create_app(Settings(app_env="development"), database_url=url)
    async with app.router.lifespan_context(app):
        await app.state.service.wait_ready(30)
        deadline = time.monotonic() + 10
        while "OPEN MODE" not in caplog.text:
            assert time.monotonic() < deadline, "no open-mode warning"
            await asyncio.sleep(0.02)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/events")).status_code == 200  # open: no key needed
    warning = next(r for r in caplog.records if "OPEN MODE" in r.getMessage())
    assert warning.levelno == logging.WARNING
    assert "keys create" in warning.getMessage()


async def start_production(url: str, **overrides: Any) -> FastAPI:
    settings = Settings(app_env="production", **overrides)
    app = create_app(settings, database_url=url, sequencer_settings=FAST_SEQUENCER)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert_problem(await client.get("/events"), 401)  # never open in production
    return app


async def test_production_refuses_to_start_without_an_active_key(
    make_database: MakeDatabase,
) -> None:
    url = await make_database()
    with pytest.raises(StartupRefused, match="no active API key"):
        await start_production(url, allow_privileged_database_role=True)
    connection = await connect(url)
    try:
        record, _ = await create_key(connection, "ops", "admin")
        await revoke_key(connection, record.id)
        with pytest.raises(StartupRefused, match="no active API key"):  # revoked ones count not
            await start_production(url, allow_privileged_database_role=True)
        await create_key(connection, "ops2", "admin")
    finally:
        await connection.close()
    await start_production(url, allow_privileged_database_role=True)


async def test_production_refuses_a_database_role_that_can_rewrite_the_ledger(
    make_database: MakeDatabase,
) -> None:
    url = await make_database()  # the tests' superuser: it can do anything
    connection = await connect(url)
    try:
        await create_key(connection, "ops", "admin")
    finally:
        await connection.close()
    with pytest.raises(StartupRefused, match=r"can rewrite the ledger \(events: DELETE"):
        await start_production(url)
    await start_production(url, allow_privileged_database_role=True)


# --- The CLI ---


@pytest.fixture
async def cli_database(make_database: MakeDatabase, monkeypatch: pytest.MonkeyPatch) -> str:
    url = await make_database()
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("APP_ENV", "development")
    return url


def test_the_keys_cli_creates_lists_and_revokes(
    cli_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "create", "--role", "analyst", "--name", "ana"]) == 0
    created = capsys.readouterr()
    key = created.out.strip()
    assert KEY_PATTERN.fullmatch(key), created.out  # stdout: the key and nothing else
    assert "shown only this once" in created.err
    key_id = key_id_of(key)
    assert key_id is not None
    assert key_id in created.err

    assert main(["keys", "list"]) == 0
    listing = capsys.readouterr().out
    assert re.search(rf"^{key_id}\s+ana\s+analyst\s+\S+\s+-$", listing, re.MULTILINE), listing
    assert key.split("_", 2)[2] not in listing

    assert main(["keys", "revoke", key_id]) == 0
    assert f"revoked {key_id}" in capsys.readouterr().out
    assert main(["keys", "list"]) == 0
    assert not re.search(rf"^{key_id}.*\s-$", capsys.readouterr().out, re.MULTILINE)

    assert main(["keys", "revoke", "0123456789abcdef"]) == 1
    assert "no API key" in capsys.readouterr().err
    assert main(["keys", "create", "--role", "agent", "--name", "bad name"]) == 2
    assert "--name" in capsys.readouterr().err
    with pytest.raises(SystemExit) as bad_role:
        main(["keys", "create", "--role", "root", "--name", "x"])
    assert bad_role.value.code == 2


def test_serve_in_production_without_keys_exits_non_zero_before_serving(
    cli_database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("LEDGER_ALLOW_PRIVILEGED_DB_ROLE", "true")
    assert main(["serve", "--port", "0"]) == 1
    output = capsys.readouterr()
    assert "refusing to start" in output.err
    assert "no active API key" in output.err
    assert "serving on" not in output.out
