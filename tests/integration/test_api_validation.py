"""Bad input to every endpoint: always a 4xx problem+json that names what was wrong, never
a 500, and nothing written."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import new_applicant
from tests.support.helpers import JSON_HEADERS, assert_problem, row_counts

ERROR_KEYS = {"field", "location", "message", "type"}
ZERO_UUID = "00000000-0000-0000-0000-000000000000"


async def rows_for_applicant(pool: asyncpg.Pool, applicant_id: str) -> int:
    async with pool.acquire() as connection:
        count: int = await connection.fetchval(
            """
            SELECT (SELECT count(*) FROM loan_applications WHERE applicant_id = $1)
                 + (SELECT count(*) FROM events WHERE data->>'applicant_id' = $1)
            """,
            applicant_id,
        )
    return count


def assert_names_field(problem: Any, field: str, location: str | None = None) -> None:
    """A validation problem whose `errors` list names `field` (and where it was)."""
    errors = problem["errors"]
    assert isinstance(errors, list)
    assert errors
    for error in errors:
        assert set(error) == ERROR_KEYS
        assert all(isinstance(value, str) and value for value in error.values())
    named = [error for error in errors if error["field"] == field]
    assert named, f"{field!r} is not named in {errors}"
    if location is not None:
        assert {error["location"] for error in named} == {location}
    assert field in problem["detail"]


# --- POST /lending/apply: bad bodies ---

# Every body below is refused, so this applicant never gets a row.
UNWRITTEN = new_applicant()

VALID_FIELDS = {
    "applicant_id": json.dumps(UNWRITTEN),
    "amount": "5000",
    "income": "90000",
    "employment_years": "6",
}


def body(**changes: str | None) -> str:
    """A request body as raw JSON text: the valid fields with some replaced by other raw JSON
    fragments, or left out (None), or added."""
    fields = {**VALID_FIELDS, **changes}
    return (
        "{"
        + ", ".join(f'"{name}": {value}' for name, value in fields.items() if value is not None)
        + "}"
    )


def text(value: str) -> str:
    """A JSON string literal."""
    return json.dumps(value, ensure_ascii=False)


# (id, body, the field the problem must name). "body" is the whole body.
BAD_BODIES: list[tuple[str, str | bytes, str]] = [
    # Not a JSON object at all.
    ("not_json", "this is not json", "body"),
    ("truncated_json", '{"applicant_id": ', "body"),
    ("trailing_garbage", body() + " x", "body"),
    ("single_quotes", "{'applicant_id': 'cust_1001'}", "body"),
    ("json_array_of_a_valid_body", "[" + body() + "]", "body"),
    ("json_empty_array", "[]", "body"),
    ("json_string", '"cust_1001"', "body"),
    ("json_number", "5000", "body"),
    ("json_null", "null", "body"),
    ("json_true", "true", "body"),
    ("empty_body", "", "body"),
    ("whitespace_body", "   \n", "body"),
    ("invalid_utf8", b'{"applicant_id": "\xff\xfe", "amount": 1}', "body"),
    # Which "amount" did the sender mean? Parsers disagree, so the ledger refuses to guess.
    ("duplicate_key", body()[:-1] + ', "amount": 6000}', "body"),
    ("duplicate_key_nested", body(amount='{"a": 1, "a": 2}'), "body"),
    ("empty_object", "{}", "applicant_id"),
    # NaN and Infinity are not JSON.
    ("amount_nan_literal", body(amount="NaN"), "body"),
    ("amount_infinity_literal", body(amount="Infinity"), "body"),
    ("amount_minus_infinity_literal", body(amount="-Infinity"), "body"),
    ("income_nan_literal", body(income="NaN"), "body"),
    # Missing fields.
    ("missing_applicant_id", body(applicant_id=None), "applicant_id"),
    ("missing_amount", body(amount=None), "amount"),
    ("missing_income", body(income=None), "income"),
    ("missing_employment_years", body(employment_years=None), "employment_years"),
    # Null fields.
    ("null_applicant_id", body(applicant_id="null"), "applicant_id"),
    ("null_amount", body(amount="null"), "amount"),
    ("null_income", body(income="null"), "income"),
    ("null_employment_years", body(employment_years="null"), "employment_years"),
    # Unknown fields.
    ("unknown_field", body(note=text("hello")), "note"),
    ("camel_case_field", body(applicant_id=None, applicantId=text(UNWRITTEN)), "applicantId"),
    # applicant_id.
    ("applicant_id_too_short", body(applicant_id=text("ab")), "applicant_id"),
    ("applicant_id_empty", body(applicant_id=text("")), "applicant_id"),
    ("applicant_id_65_chars", body(applicant_id=text("a" * 65)), "applicant_id"),
    ("applicant_id_10000_chars", body(applicant_id=text("a" * 10_000)), "applicant_id"),
    ("applicant_id_inner_space", body(applicant_id=text("cust 1001")), "applicant_id"),
    ("applicant_id_leading_space", body(applicant_id=text(" cust_1001")), "applicant_id"),
    ("applicant_id_trailing_space", body(applicant_id=text("cust_1001 ")), "applicant_id"),
    ("applicant_id_trailing_newline", body(applicant_id=text("cust_1001\n")), "applicant_id"),
    ("applicant_id_nul", body(applicant_id=text("cust\u00001001")), "applicant_id"),
    ("applicant_id_arabic_digits", body(applicant_id=text("cust_١٢٣")), "applicant_id"),
    (
        "applicant_id_fullwidth",
        body(applicant_id=text("\uff43\uff55\uff53\uff54_1")),
        "applicant_id",
    ),
    ("applicant_id_accented", body(applicant_id=text("clément")), "applicant_id"),
    ("applicant_id_emoji", body(applicant_id=text("cust_😀")), "applicant_id"),
    ("applicant_id_slash", body(applicant_id=text("cust/1001")), "applicant_id"),
    ("applicant_id_number", body(applicant_id="12345"), "applicant_id"),
    ("applicant_id_true", body(applicant_id="true"), "applicant_id"),
    ("applicant_id_list", body(applicant_id='["cust_1001"]'), "applicant_id"),
    ("applicant_id_object", body(applicant_id='{"id": "cust_1001"}'), "applicant_id"),
    # amount: zero and below.
    ("amount_zero", body(amount="0"), "amount"),
    ("amount_negative_zero", body(amount="-0"), "amount"),
    ("amount_zero_cents", body(amount="0.00"), "amount"),
    ("amount_negative_zero_cents", body(amount="-0.00"), "amount"),
    ("amount_negative_zero_string", body(amount=text("-0.00")), "amount"),
    ("amount_zero_string", body(amount=text("0")), "amount"),
    ("amount_negative", body(amount="-1"), "amount"),
    ("amount_negative_string", body(amount=text("-5000")), "amount"),
    # amount: too many decimal places.
    ("amount_three_places", body(amount="0.001"), "amount"),
    ("amount_three_places_string", body(amount=text("0.001")), "amount"),
    ("amount_rounds_up_to_the_limit", body(amount="9999999999.995"), "amount"),
    ("amount_tiny_exponent", body(amount="1e-1000000000"), "amount"),
    # amount: too large.
    ("amount_at_the_limit", body(amount="10000000000"), "amount"),
    ("amount_at_the_limit_exponent", body(amount="1e10"), "amount"),
    ("amount_1e400", body(amount="1e400"), "amount"),
    ("amount_huge_exponent", body(amount="1e1000000000"), "amount"),
    ("amount_10_to_the_30", body(amount=str(10**30)), "amount"),
    ("amount_5000_digit_decimal", body(amount="9" * 5000 + ".5"), "amount"),
    ("amount_10000_digit_string", body(amount=text("1" * 10_000)), "amount"),
    # A 5,000-digit integer passes Python's int-conversion limit: the parser refuses the body.
    ("amount_5000_digit_integer", body(amount="9" * 5000), "body"),
    # amount: not a number.
    ("amount_text", body(amount=text("abc")), "amount"),
    ("amount_empty_string", body(amount=text("")), "amount"),
    ("amount_blank_string", body(amount=text(" ")), "amount"),
    ("amount_nan_string", body(amount=text("NaN")), "amount"),
    ("amount_infinity_string", body(amount=text("Infinity")), "amount"),
    ("amount_true", body(amount="true"), "amount"),
    ("amount_false", body(amount="false"), "amount"),
    ("amount_nested_object", body(amount='{"value": 5000}'), "amount"),
    ("amount_empty_object", body(amount="{}"), "amount"),
    ("amount_list", body(amount="[5000]"), "amount"),
    # income.
    ("income_zero", body(income="0"), "income"),
    ("income_negative", body(income="-90000"), "income"),
    ("income_three_places", body(income="90000.001"), "income"),
    ("income_1e400", body(income="1e400"), "income"),
    ("income_at_the_limit", body(income="10000000000.00"), "income"),
    ("income_text", body(income=text("lots")), "income"),
    ("income_true", body(income="true"), "income"),
    ("income_false", body(income="false"), "income"),
    ("income_nested_object", body(income='{"yearly": 90000}'), "income"),
    # employment_years.
    ("years_true", body(employment_years="true"), "employment_years"),
    ("years_false", body(employment_years="false"), "employment_years"),
    ("years_float_6_0", body(employment_years="6.0"), "employment_years"),
    ("years_float_6_5", body(employment_years="6.5"), "employment_years"),
    ("years_exponent", body(employment_years="1e1"), "employment_years"),
    ("years_string", body(employment_years=text("6")), "employment_years"),
    ("years_81", body(employment_years="81"), "employment_years"),
    ("years_minus_1", body(employment_years="-1"), "employment_years"),
    ("years_10_to_the_30", body(employment_years=str(10**30)), "employment_years"),
    ("years_list", body(employment_years="[6]"), "employment_years"),
    ("years_object", body(employment_years='{"years": 6}'), "employment_years"),
]


@pytest.mark.parametrize(
    ("content", "field"),
    [pytest.param(content, field, id=case) for case, content, field in BAD_BODIES],
)
async def test_bad_bodies_get_422_naming_the_field_and_write_nothing(
    client: httpx.AsyncClient, pool: asyncpg.Pool, content: str | bytes, field: str
) -> None:
    before = await row_counts(pool)
    raw = content if isinstance(content, bytes) else content.encode()
    response = await client.post("/lending/apply", content=raw, headers=JSON_HEADERS)
    problem = assert_problem(response, 422, "validation-error")
    assert_names_field(problem, field, "body")
    assert await row_counts(pool) == before
    assert await rows_for_applicant(pool, UNWRITTEN) == 0


async def test_every_broken_field_is_named_at_once(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    before = await row_counts(pool)
    content = body(applicant_id="null", amount="null", income="null", employment_years="null")
    response = await client.post("/lending/apply", content=content, headers=JSON_HEADERS)
    problem = assert_problem(response, 422, "validation-error")
    for field in ("applicant_id", "amount", "income", "employment_years"):
        assert_names_field(problem, field, "body")
    assert await row_counts(pool) == before


async def test_a_body_over_the_size_limit_gets_413(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    before = await row_counts(pool)
    content = body(applicant_id=text("a" * 70_000))
    response = await client.post("/lending/apply", content=content, headers=JSON_HEADERS)
    assert_problem(response, 413, "body-too-large")
    assert await row_counts(pool) == before


@pytest.mark.parametrize(
    "content_type",
    [
        pytest.param(None, id="no_content_type"),
        pytest.param("text/plain", id="text_plain"),
        pytest.param("text/json", id="text_json"),
        pytest.param("application/x-www-form-urlencoded", id="form"),
        pytest.param("multipart/form-data; boundary=x", id="multipart"),
        pytest.param("application/xml", id="xml"),
        pytest.param("application/jsonx", id="jsonx"),
        pytest.param("application/octet-stream", id="octet_stream"),
    ],
)
@pytest.mark.parametrize(
    "content",
    [pytest.param(body(), id="json_body"), pytest.param("not json", id="non_json_body")],
)
async def test_other_media_types_get_415_and_write_nothing(
    client: httpx.AsyncClient, pool: asyncpg.Pool, content_type: str | None, content: str
) -> None:
    before = await row_counts(pool)
    headers = {} if content_type is None else {"content-type": content_type}
    response = await client.post("/lending/apply", content=content.encode(), headers=headers)
    assert_problem(response, 415, "unsupported-media-type")
    assert await row_counts(pool) == before
    assert await rows_for_applicant(pool, UNWRITTEN) == 0


# --- Money strings and bodies the parser cannot nest ---


@pytest.mark.parametrize(
    "amount",
    [
        pytest.param("\u0665\u0660\u0660\u0660", id="arabic_indic_digits"),
        pytest.param("\uff15\uff10\uff10\uff10", id="fullwidth_digits"),
        pytest.param(" 5000", id="leading_space"),
        pytest.param("5000 ", id="trailing_space"),
        pytest.param("5_000", id="underscore"),
        pytest.param("+5000", id="plus_sign"),
        pytest.param("1e3", id="exponent"),
        pytest.param(".5", id="no_integer_digits"),
        pytest.param("5000.", id="no_fraction_digits"),
    ],
)
async def test_money_strings_outside_the_published_pattern_are_refused(
    client: httpx.AsyncClient, pool: asyncpg.Pool, amount: str
) -> None:
    """A decimal string must match the pattern the OpenAPI schema publishes for Money,
    `^[0-9]+(\\.[0-9]{1,2})?$` (api/service/models.py): ASCII digits, an optional point and one or
    two decimals. Anything else is a 422 naming the field, and nothing is written."""
    applicant = new_applicant()
    before = await row_counts(pool)
    content = body(applicant_id=text(applicant), amount=text(amount))
    response = await client.post("/lending/apply", content=content, headers=JSON_HEADERS)
    problem = assert_problem(response, 422, "validation-error")
    assert_names_field(problem, "amount", "body")
    assert await row_counts(pool) == before
    assert await rows_for_applicant(pool, applicant) == 0


async def test_deeply_nested_json_is_a_422_naming_the_body(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """Nesting deeper than the parser's recursion limit is still a body that is not an
    application: 422 validation-error naming `body`, like every other unparsable body
    (invalid UTF-8, NaN, over-long integers), not a bare 400."""
    before = await row_counts(pool)
    for content in ("[" * 20_000 + "]" * 20_000, body(amount="[" * 20_000 + "]" * 20_000)):
        response = await client.post("/lending/apply", content=content, headers=JSON_HEADERS)
        problem = assert_problem(response, 422, "validation-error")
        assert_names_field(problem, "body", "body")
    assert await row_counts(pool) == before


# --- Idempotency-Key header ---


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"k" * 201, id="201_chars"),
        pytest.param(b"a b", id="inner_space"),
        pytest.param(b"a\tb", id="inner_tab"),
        pytest.param("ключ-1".encode(), id="non_ascii"),
        pytest.param("key-é".encode("latin-1"), id="latin1_byte"),
    ],
)
async def test_bad_idempotency_keys_get_422_and_write_nothing(
    client: httpx.AsyncClient, pool: asyncpg.Pool, key: bytes
) -> None:
    applicant = new_applicant()
    before = await row_counts(pool)
    response = await client.post(
        "/lending/apply",
        content=body(applicant_id=text(applicant)),
        headers=[(b"content-type", b"application/json"), (b"idempotency-key", key)],
    )
    problem = assert_problem(response, 422, "validation-error")
    assert_names_field(problem, "Idempotency-Key", "header")
    assert await row_counts(pool) == before
    assert await rows_for_applicant(pool, applicant) == 0


async def test_an_idempotency_key_of_200_printable_characters_is_accepted(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    applicant = new_applicant()
    key = (applicant + "!~" * 100)[:200]
    response = await client.post(
        "/lending/apply",
        content=body(applicant_id=text(applicant)),
        headers={**JSON_HEADERS, "Idempotency-Key": key},
    )
    assert response.status_code == 200, response.text
    async with pool.acquire() as connection:
        stored = await connection.fetchval(
            "SELECT count(*) FROM idempotency_keys WHERE idempotency_key = $1", key
        )
    assert stored == 1


# --- Other endpoints ---

LONG_ID = "a" * 65


@pytest.mark.parametrize(
    ("path", "field", "location"),
    [
        pytest.param("/lending/applicants/ab/history", "applicant_id", "path", id="short_id"),
        pytest.param(f"/lending/applicants/{LONG_ID}/history", "applicant_id", "path", id="long"),
        pytest.param(
            "/lending/applicants/cust%201001/history", "applicant_id", "path", id="space_in_id"
        ),
        pytest.param(
            "/lending/applicants/cust%211001/history", "applicant_id", "path", id="bang_in_id"
        ),
        pytest.param(
            "/lending/applicants/cust_%D9%A1%D9%A2%D9%A3/history",
            "applicant_id",
            "path",
            id="arabic_digits_in_id",
        ),
        pytest.param(
            "/lending/applicants/cust_1001%0A/history", "applicant_id", "path", id="newline_in_id"
        ),
        pytest.param("/lending/applicants/cust_1001/history?limit=0", "limit", "query", id="l0"),
        pytest.param("/lending/applicants/cust_1001/history?limit=101", "limit", "query", id="101"),
        pytest.param("/lending/applicants/cust_1001/history?limit=-1", "limit", "query", id="neg"),
        pytest.param("/lending/applicants/cust_1001/history?limit=abc", "limit", "query", id="abc"),
        pytest.param("/lending/applicants/cust_1001/history?limit=1.5", "limit", "query", id="1.5"),
        pytest.param("/lending/applicants/cust_1001/history?limit=", "limit", "query", id="blank"),
        pytest.param("/events?after=-1", "after", "query", id="feed_after_negative"),
        pytest.param("/events?after=abc", "after", "query", id="feed_after_text"),
        pytest.param("/events?after=", "after", "query", id="feed_after_blank"),
        pytest.param("/events?after=1.5", "after", "query", id="feed_after_fraction"),
        pytest.param(f"/events?after={2**63}", "after", "query", id="feed_after_2_63"),
        pytest.param("/events?after=" + "9" * 5000, "after", "query", id="feed_after_5000_digits"),
        pytest.param("/events?limit=0", "limit", "query", id="feed_limit_0"),
        pytest.param("/events?limit=1001", "limit", "query", id="feed_limit_1001"),
        pytest.param("/events?limit=abc", "limit", "query", id="feed_limit_text"),
    ],
)
async def test_bad_paths_and_queries_get_422_naming_the_parameter(
    client: httpx.AsyncClient, path: str, field: str, location: str
) -> None:
    response = await client.get(path)
    problem = assert_problem(response, 422, "validation-error")
    assert_names_field(problem, field, location)


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/lending/applicants/abc/history", id="shortest_id"),
        pytest.param(f"/lending/applicants/{'a' * 64}/history", id="longest_id"),
        pytest.param("/lending/applicants/a.b:c-d_e/history?limit=100", id="all_symbols"),
        pytest.param("/lending/applicants/cust_1001/history?limit=1", id="limit_1"),
        pytest.param(f"/events?after={2**63 - 1}&limit=1000", id="feed_at_the_bounds"),
    ],
)
async def test_boundary_queries_are_accepted(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert isinstance(response.json(), list)


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(f"/lending/applications/{ZERO_UUID}", id="unknown_application"),
        pytest.param(f"/lending/applications/{ZERO_UUID}/events", id="unknown_events"),
        pytest.param("/lending/applications/not-a-uuid", id="malformed_application"),
        pytest.param("/lending/applications/not-a-uuid/events", id="malformed_events"),
        pytest.param(f"/lending/applications/{ZERO_UUID[:-1]}", id="short_uuid"),
        pytest.param("/nope", id="unknown_route"),
        pytest.param("/lending", id="unknown_prefix"),
        pytest.param("/lending/applications", id="no_application_id"),
        pytest.param("/lending/applicants/cust_1001", id="applicant_without_history"),
        pytest.param("/events/", id="trailing_slash_is_not_redirected"),
    ],
)
async def test_unknown_things_get_404_problem_json(client: httpx.AsyncClient, path: str) -> None:
    assert_problem(await client.get(path), 404, "not-found")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        pytest.param("GET", "/lending/apply", "POST", id="get_apply"),
        pytest.param("PUT", "/lending/apply", "POST", id="put_apply"),
        pytest.param("DELETE", "/events", "GET", id="delete_events"),
        pytest.param("POST", "/events", "GET", id="post_events"),
        pytest.param("DELETE", f"/lending/applications/{ZERO_UUID}", "GET", id="delete_app"),
        pytest.param("POST", "/lending/applicants/cust_1001/history", "GET", id="post_history"),
    ],
)
async def test_wrong_methods_get_405_problem_json(
    client: httpx.AsyncClient, pool: asyncpg.Pool, method: str, path: str, allowed: str
) -> None:
    before = await row_counts(pool)
    response = await client.request(method, path, content=body(), headers=JSON_HEADERS)
    assert_problem(response, 405, "method-not-allowed")
    assert response.headers["allow"] == allowed
    assert await row_counts(pool) == before
