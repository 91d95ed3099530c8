"""One table of problem types (api/web/problems.py), shown in docs/api.md, and every error
the service maps has its type in it. tests/integration/test_fuzz.py checks, on every
response of every fuzzed route, that the app emits no other type."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import ledger.errors
from api.web.problems import (
    PROBLEM_TYPE_BY_SLUG,
    PROBLEM_TYPES,
    SLUG_BY_ERROR,
    SLUG_BY_STATUS,
    problem_body,
    problem_types_table,
)
from ledger.errors import LedgerError

ROOT = Path(__file__).resolve().parents[2]


def test_docs_show_the_table_of_problem_types() -> None:
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- problem-types -->\n(.*?)\n<!-- /problem-types -->", text, re.DOTALL)
    assert match, "docs/api.md lost its problem-types markers"
    assert match.group(1) == problem_types_table(), (
        "docs/api.md's error table differs from api/web/problems.PROBLEM_TYPES; paste this:\n"
        + problem_types_table()
    )


def test_every_type_is_listed_once_and_every_mapping_uses_listed_types() -> None:
    assert len(PROBLEM_TYPE_BY_SLUG) == len(PROBLEM_TYPES)
    for status, slug in SLUG_BY_STATUS.items():
        assert PROBLEM_TYPE_BY_SLUG[slug].status == status
    for slug in SLUG_BY_ERROR.values():
        assert slug in PROBLEM_TYPE_BY_SLUG


def test_every_domain_error_has_a_listed_type() -> None:
    """Except UnknownEventType: a stored event nobody can decode is a bug (500)."""
    errors = [
        kind
        for _, kind in inspect.getmembers(ledger.errors, inspect.isclass)
        if issubclass(kind, LedgerError) and kind is not LedgerError
    ]
    unmapped = {
        kind.__name__ for kind in errors if not any(issubclass(kind, e) for e in SLUG_BY_ERROR)
    }
    assert unmapped == {"UnknownEventType"}


def test_a_type_missing_from_the_table_cannot_be_written() -> None:
    assert problem_body(422, "x")["type"] == "urn:lending-ledger:problem:validation-error"
    try:
        problem_body(422, "x", slug="invalid-command")
    except KeyError:
        return
    raise AssertionError("problem_body wrote a type missing from the table")
