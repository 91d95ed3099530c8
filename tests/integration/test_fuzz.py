"""API fuzzing with schemathesis, driven by the service's own OpenAPI document.

Every operation the app publishes is exercised (schema-driven: routes added later are
covered without touching this file), with schemathesis's default phases (explicit
examples, coverage of boundaries and invalid values, random fuzzing) and every default
check: no 5xx, documented status codes, content types, response bodies and headers,
invalid data rejected with a 4xx, valid data not rejected.

Left out, each for a reason:
- streaming endpoints (any response declared `text/event-stream`, e.g. the SSE feed): a
  stream has no end for the fuzzer to validate;
- the MCP mount (`/mcp`), if present: its own protocol, not this OpenAPI's.

The number of examples is bounded and generation is derandomised so CI is repeatable.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any, cast

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from schemathesis.config import SchemathesisConfig
from schemathesis.filters import HasAPIOperation
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import positive_data_acceptance

from api.service.keystore import create_key
from api.service.models import MONEY_STRING, PUBLISHED_MONEY_STRING
from api.service.settings import Settings
from api.web.app import create_app
from ledger.application import check_money
from ledger.db import connect
from tests.conftest import FAST_SEQUENCER, MakeDatabase

READY_TIMEOUT = 30.0


@pytest.fixture(scope="module")
async def fuzz_database_url(make_database: MakeDatabase) -> str:
    """The fuzzer writes whatever it likes: a database of its own."""
    return await make_database()


@pytest.fixture(scope="module")
async def admin_key(fuzz_database_url: str) -> str:
    """Authentication on (a key exists), the fuzzer calling as admin: every operation is
    reachable, and schemathesis's auth checks see real 401s for missing or bad keys."""
    connection = await connect(fuzz_database_url)
    try:
        _, key = await create_key(connection, "fuzzer", "admin")
    finally:
        await connection.close()
    return key


@pytest.fixture(scope="module")
def fuzz_app(fuzz_database_url: str, admin_key: str) -> Iterator[FastAPI]:
    app = create_app(
        Settings(app_env="test"), database_url=fuzz_database_url, sequencer_settings=FAST_SEQUENCER
    )
    # schemathesis runs the app's lifespan (pool, sequencer) on its own event loop.
    with asgi.get_client(cast(Any, app)) as client:
        deadline = time.monotonic() + READY_TIMEOUT
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the app never became ready"
            time.sleep(0.05)
    try:
        yield app
    finally:
        # Stop the pool and the sequencer before the database is dropped.
        asgi.shutdown_lifespans()


def is_streaming(context: HasAPIOperation) -> bool:
    responses: dict[str, Any] = context.operation.definition.raw.get("responses", {})
    return any(
        "text/event-stream" in (response.get("content") or {}) for response in responses.values()
    )


def fuzz_config() -> SchemathesisConfig:
    # schemathesis's default list of rejections, plus 413 (a body over the size limit).
    rejections = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428"]
    rejections += ["429", "5xx"]
    return SchemathesisConfig.from_dict(
        {
            "seed": 20_240_601,
            "checks": {"negative_data_rejection": {"expected-statuses": rejections}},
        }
    )


@pytest.fixture(scope="module")
def api_schema(fuzz_app: FastAPI) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app, config=fuzz_config())


schema = schemathesis.pytest.from_fixture("api_schema").exclude(func=is_streaming)
schema = schema.exclude(path_regex="^/mcp")


def give_valid_cases_a_fresh_idempotency_key(case: Any) -> None:
    """A key used again for a different request is refused by design (422
    idempotency-key-reused, as the IETF Idempotency-Key draft asks), and generated keys
    repeat across cases ("0", "00", ...): each schema-valid case gets a key of its own, so
    "valid data is accepted" keeps its meaning. Invalid cases keep what was generated."""
    headers = case.headers or {}
    if case.meta is not None and case.meta.generation.mode.is_positive:
        for name in list(headers):
            if name.lower() == "idempotency-key":
                headers[name] = uuid.uuid4().hex


# Schema-valid requests the service refuses by design, for rules JSON Schema cannot state.
# Only these are exempt from "valid data is accepted"; every other check still applies.
REFUSED_BY_DESIGN: dict[str, Callable[[dict[str, str]], bool]] = {
    # A JSON number with a fraction or exponent (384.0, 1e2) where an integer is expected:
    # JSON Schema's "integer" admits 384.0; the ledger takes integers as integer tokens only.
    "integer_token": lambda error: (
        error["type"] == "int_type" or error["message"] == "must be a JSON integer"
    ),
    # A paging cursor is opaque, issued by the service: no schema says which ones it issued.
    "cursor": lambda error: error["field"] == "cursor",
    # Rules across fields: one must be the SHA-256 of another (agent actions), or not
    # greater than another (seal consistency proofs: first <= second).
    "digest": lambda error: "is not the SHA-256 of" in error["message"],
    "order": lambda error: error["message"].startswith("must not be greater than"),
}


def refused_by_design(response: Any) -> bool:
    if response.status_code != 422:
        return False
    errors = response.json().get("errors") or []
    return bool(errors) and all(
        any(rule(error) for rule in REFUSED_BY_DESIGN.values()) for error in errors
    )


@pytest.fixture
def pytest_9_2_node_id(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32 reads `node._nodeid`, which pytest 9.2 no longer has."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@pytest.mark.usefixtures("pytest_9_2_node_id")
@schema.parametrize()
@settings(
    max_examples=25,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_honours_its_documented_contract(case: Any, admin_key: str) -> None:
    give_valid_cases_a_fresh_idempotency_key(case)
    auth = {"Authorization": f"Bearer {admin_key}"}
    response = case.call(headers=auth)
    excluded = [positive_data_acceptance] if refused_by_design(response) else []
    case.validate_response(
        response, excluded_checks=excluded, headers=auth, transport_kwargs={"headers": auth}
    )


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
