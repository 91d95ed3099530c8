"""The OpenAPI document tells the truth: schemathesis, driven by the service's own
document, runs against the real app with every check on and every phase (examples,
coverage, fuzzing, and the stateful phase, which follows the document's links from a
submitted application to reading, reviewing and withdrawing it), in open mode and in keyed
mode with a key of each role. Any failure fails the test.

Checked on every response: no 5xx, every status documented, content types, response
bodies and headers as documented, schema-invalid requests refused with a 4xx,
schema-valid ones accepted (or refused only for auth, 404 or 409), missing required
headers refused, unsupported methods answered 405 with Allow, auth enforced as declared
(a request without the key, or with a wrong one, is a 401/403 wherever the document
demands a key; in open mode the served document marks the key optional), resources the
stateful phase created are found, and deleted ones are gone.

Left out, each for a reason:
- streaming endpoints (any response declared `text/event-stream`, e.g. the SSE feed): a
  stream has no end for the fuzzer to validate (tests/integration/test_stream.py);
- the MCP mount (`/mcp`): its own protocol, not this OpenAPI's (tests/integration/test_mcp.py).

Also collected from every response of every run: the problem types the app emits, which
must all be in the one table of problem types (api/web/problems.py, docs/api.md).

Runs are seeded and bounded (MAX_EXAMPLES, STATEFUL_STEPS) so CI is repeatable and quick.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, cast

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import example, given, settings
from hypothesis import strategies as st
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events, from_schema
from schemathesis.python import asgi

from api.service.access import Role
from api.service.keystore import create_key
from api.service.models import MONEY_STRING, PUBLISHED_MONEY_STRING
from api.service.settings import Settings
from api.web.app import create_app
from api.web.problems import PROBLEM_TYPE_BY_SLUG, PROBLEM_TYPE_PREFIX
from ledger.application import check_money
from ledger.db import connect
from tests.conftest import FAST_SEQUENCER, MakeDatabase

logger = logging.getLogger(__name__)

READY_TIMEOUT = 30.0
MAX_EXAMPLES = 8
STATEFUL_STEPS = 12
STATEFUL_SCENARIOS = 10
SEED = 20_240_601
KEYED_MODES = [role.value for role in Role]


def _ready(app: FastAPI) -> None:
    with asgi.get_client(cast(Any, app)) as client:
        deadline = time.monotonic() + READY_TIMEOUT
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the app never became ready"
            time.sleep(0.05)


def _app(database_url: str) -> FastAPI:
    return create_app(
        Settings(app_env="test", seal_interval_seconds=0),
        database_url=database_url,
        sequencer_settings=FAST_SEQUENCER,
    )


@pytest.fixture(scope="module")
async def open_database_url(make_database: MakeDatabase) -> str:
    """No key ever created: open mode."""
    return await make_database()


@dataclass(frozen=True)
class KeyedDatabase:
    url: str
    keys: dict[str, str]


@pytest.fixture(scope="module")
async def keyed_database(make_database: MakeDatabase) -> KeyedDatabase:
    """A key of each role: authentication on."""
    url = await make_database()
    connection = await connect(url)
    try:
        keys = {}
        for role in Role:
            _, keys[role.value] = await create_key(connection, f"fuzzer-{role}", role.value)
    finally:
        await connection.close()
    return KeyedDatabase(url, keys)


@pytest.fixture
def fresh_app() -> Iterator[Callable[[str], FastAPI]]:
    """Starts an app per run (schemathesis runs its lifespan on its own event loop, once:
    the engine ends every lifespan it runs when it finishes)."""

    def start(database_url: str) -> FastAPI:
        app = _app(database_url)
        _ready(app)
        return app

    try:
        yield start
    finally:
        # Stop the pools and sequencers before the databases are dropped.
        asgi.shutdown_lifespans()


# Schema-valid requests the service refuses by design, for rules JSON Schema cannot state.
# Each is said in the operation's description, and documented as a 422 `validation-error`.
# Only these are exempt from "valid data is accepted"; every other check still applies.
REFUSED_BY_DESIGN: dict[str, Callable[[dict[str, str]], bool]] = {
    # A JSON number with a fraction or exponent (384.0, 1e2) where an integer is expected:
    # JSON Schema's "integer" admits 384.0; the ledger takes integers as integer tokens only.
    "integer token": lambda error: (
        error["type"] == "int_type" or error["message"] == "must be a JSON integer"
    ),
    # Rules across fields or parameters: a digest of another field (agent actions), first <=
    # second (consistency proofs), as_of or at_position (time travel), If-Match equal to
    # expected_version.
    "digest": lambda error: "is not the SHA-256 of" in error["message"],
    "order": lambda error: error["message"].startswith("must not be greater than"),
    "one point in time": lambda error: error["message"] == "give as_of or at_position, not both",
    # Reason codes of a decline: at least one, none repeated, each in the catalogue of the
    # model that scored this application (GET /lending/reason-codes) - state, not schema.
    "reason codes": lambda error: error["field"] == "reason_codes",
    "two versions": lambda error: (
        error["field"] == "expected_version"
        and error["message"].startswith("If-Match says version")
    ),
}


def refused_by_design(response: Any) -> bool:
    if response.status_code != 422:
        return False
    errors = json.loads(response.content).get("errors") or []
    return bool(errors) and all(
        any(rule(error) for rule in REFUSED_BY_DESIGN.values()) for error in errors
    )


def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    """Keeps every failure except a schema-valid request refused by a documented rule."""
    positive = "positive_data_acceptance" in type(failure).checks
    return not (positive and refused_by_design(response))


def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """A key used again for a different request is refused by design (422
    idempotency-key-reused, as the IETF Idempotency-Key draft asks), and generated keys
    repeat across cases ("0", "00", ...): each schema-valid case gets a key of its own, so
    "valid data is accepted" keeps its meaning. Invalid cases keep what was generated."""
    headers = case.headers or {}
    if case.meta is not None and case.meta.generation.mode.is_positive:
        for name in list(headers):
            if name.lower() == "idempotency-key":
                headers[name] = uuid.uuid4().hex


@dataclass
class RunResult:
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    problem_types: set[str] = field(default_factory=set)
    statuses: set[int] = field(default_factory=set)
    statuses_of: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    stateful_steps: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


def run_schemathesis(app: FastAPI, headers: dict[str, str]) -> RunResult:
    config = SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "headers": headers,
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True},
            "phases": {
                "stateful": {
                    "max-steps": STATEFUL_STEPS,
                    "generation": {"max-examples": STATEFUL_SCENARIOS},
                }
            },
            "checks": {
                # 428 Precondition Required is, by definition, the answer to a well-formed
                # request that lacks the version it acts on (If-Match or expected_version:
                # one of two, across header and body, which no schema can demand).
                "positive_data_acceptance": {
                    "expected-statuses": [
                        *("2xx", "3xx", "401", "403", "404", "409", "428", "429", "5xx")
                    ]
                },
                # schemathesis's default list of rejections, plus 413 (the body limit).
                "negative_data_rejection": {
                    "expected-statuses": [
                        *("400", "401", "403", "404", "405", "406", "409", "413", "415"),
                        *("422", "428", "429", "5xx"),
                    ]
                },
            },
        }
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config).exclude(
        path_regex="^/(mcp|events/stream)$"
    )
    schema.hooks.register_hook_with_name(filter_failure, "filter_failure")
    schemathesis.hook(before_call)  # a global hook only; unregistered below
    try:
        return collect(from_schema(schema).execute())
    finally:
        schemathesis.hooks.unregister(before_call)


def collect(stream: Any) -> RunResult:
    result = RunResult()
    started = time.monotonic()
    for event in stream:
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            for case_id, checks in recorder.checks.items():
                for check in checks:
                    if check.failure_info is None:
                        continue
                    failure = check.failure_info.failure
                    case = recorder.cases[case_id].value
                    result.failures.append(
                        f"[{event.phase.name}] {case.operation.label} {check.name}: "
                        f"{failure.title}\n  {failure.message}\n  " + case.as_curl_command()
                    )
            for case_id, interaction in recorder.interactions.items():
                response = interaction.response
                if response is None:
                    continue
                result.statuses.add(response.status_code)
                label = recorder.cases[case_id].value.operation.label
                result.statuses_of[label].add(response.status_code)
                if event.phase.name == "STATEFUL_TESTING":
                    result.stateful_steps += 1
                if "problem+json" in response.headers.get("content-type", [""])[0]:
                    result.problem_types.add(json.loads(response.content)["type"])
        elif isinstance(event, events.PhaseStarted):
            started = time.monotonic()
        elif isinstance(event, events.PhaseFinished):
            result.seconds[event.phase.name] = round(time.monotonic() - started, 1)
        elif isinstance(event, events.NonFatalError | events.FatalError):
            result.errors.append(str(event.info.format() if hasattr(event, "info") else event))
    return result


def assert_kept(result: RunResult) -> None:
    logger.info("seconds per phase: %s; stateful steps: %d", result.seconds, result.stateful_steps)
    assert not result.errors, "\n\n".join(result.errors)
    assert not result.failures, f"{len(result.failures)} failures:\n\n" + "\n\n".join(
        result.failures[:30]
    )
    unknown = {
        problem_type
        for problem_type in result.problem_types
        if problem_type.removeprefix(PROBLEM_TYPE_PREFIX) not in PROBLEM_TYPE_BY_SLUG
    }
    assert not unknown, f"problem types missing from api/web/problems.py: {unknown}"
    assert result.stateful_steps > 0, "the stateful phase ran nothing"


def test_open_mode_keeps_the_documented_contract(
    fresh_app: Callable[[str], FastAPI], open_database_url: str
) -> None:
    result = run_schemathesis(fresh_app(open_database_url), {})
    assert_kept(result)
    # No anonymous caller created a key (and so ended open mode).
    created = result.statuses_of["POST /admin/keys"]
    assert 403 in created
    assert 201 not in created


@pytest.mark.parametrize("role", KEYED_MODES)
def test_keyed_mode_keeps_the_documented_contract(
    fresh_app: Callable[[str], FastAPI], keyed_database: KeyedDatabase, role: str
) -> None:
    key = keyed_database.keys[role]
    app = fresh_app(keyed_database.url)
    result = run_schemathesis(app, {"Authorization": f"Bearer {key}"})
    assert_kept(result)
    if role != "admin":
        assert 403 in result.statuses, "a role was refused nothing"


def accepted_as_money(text: str) -> bool:
    if MONEY_STRING.fullmatch(text) is None:
        return False
    try:
        check_money(Decimal(text))
    except ValueError:
        return False
    return True


@given(st.one_of(st.from_regex(MONEY_STRING, fullmatch=True), st.text("0123456789.", max_size=16)))
@example("0")
@example("0.00")
@example("000.01")
@example("0.10")
@example("9999999999.99")
@example("09999999999.99")
@example("10000000000")
@settings(max_examples=300, deadline=None)
def test_the_published_money_pattern_is_exactly_what_is_accepted(text: str) -> None:
    """The fuzzer trusts the published pattern: it must allow every money string the
    service accepts and nothing else (zero and 10^10 and above included)."""
    published = PUBLISHED_MONEY_STRING.fullmatch(text) is not None
    assert published == accepted_as_money(text)
