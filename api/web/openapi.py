"""The OpenAPI document, told truthfully: who may call each operation and how to send the
key (security schemes, `x-roles`), every problem each operation can answer with, and the
links that lead from one operation's answer to the next (for clients and for stateful
fuzzing). The roles come from api/service/access.py, the problem responses from
api/web/dependencies.py; this module only writes them into the document.

Two variants are served at `/openapi.json` (api/web/routes/docs.py): keyed (keys required)
and open mode (development before the first key exists), where the key is optional on every
operation except creating keys.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI

from api.service.access import (
    KEY_CACHE_SECONDS,
    NEVER_OPEN,
    PUBLIC_OPERATIONS,
    Role,
    roles_for,
)
from api.web.dependencies import problem_response

BEARER = "bearerAuth"
API_KEY_HEADER = "apiKeyHeader"
SECURED: list[dict[str, list[str]]] = [{BEARER: []}, {API_KEY_HEADER: []}]
OPEN_MODE_OPTIONAL: dict[str, list[str]] = {}

OPEN_MODE_NOTE = (
    "**Open mode (development only).** While no API key has ever been created, and `APP_ENV` "
    "is not `production`, the service runs open: a request without a key may call every "
    "operation except `create_api_key`, recorded as actor `anonymous`, and this document "
    "then marks the key optional (`{}` in `security`). A key that is sent is still checked. "
    "The first key comes from the service's host (`lending-ledger keys create --role admin "
    f"--name <you>`); it ends open mode within {KEY_CACHE_SECONDS:.0f} s, for good."
)

DESCRIPTION = f"""\
An event-sourced lending ledger: loan applications, scores and decisions as immutable,
hash-chained events. Errors are RFC 9457 `application/problem+json`; `type` is one of the
problem types listed in docs/api.md.

**Authentication.** Every operation except `get_health` and `get_readiness` needs an API
key, sent as `Authorization: Bearer <key>` (or `X-API-Key: <key>`). Which roles may call
an operation is in its description and its `x-roles` extension; another role gets 403
`forbidden`, no key or a bad one 401 `unauthorized`. In production, `/openapi.json` and
`/docs` need a key too (any role).

{OPEN_MODE_NOTE}
"""

SECURITY_SCHEMES = {
    BEARER: {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "ll_<16 hex id>_<43 base64url characters>",
        "description": "An API key (`lending-ledger keys create`, or `POST /admin/keys` by an "
        "admin) as `Authorization: Bearer <key>`. " + OPEN_MODE_NOTE,
    },
    API_KEY_HEADER: {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "The same API key as `X-API-Key: <key>`, for clients that cannot set "
        "Authorization (Authorization wins when both are sent).",
    },
}


def _link(operation_id: str, description: str, **parameters: str) -> dict[str, Any]:
    return {"operationId": operation_id, "description": description, "parameters": parameters}


_APPLICATION_ID = {"path.application_id": "$response.body#/application_id"}
_APPLICATION_LINKS = {
    "GetApplication": _link("get_application", "the application now", **_APPLICATION_ID),
    "GetApplicationEvents": _link(
        "get_application_events", "the application's events", **_APPLICATION_ID
    ),
    "GetApplicantHistory": _link(
        "get_applicant_history",
        "the applicant's applications",
        **{"path.applicant_id": "$response.body#/applicant_id"},
    ),
    "ReviewApplication": _link(
        "review_application",
        "an analyst decides it (at the version just returned)",
        **_APPLICATION_ID,
        **{"header.If-Match": '"{$response.body#/stream_version}"'},
    ),
    "WithdrawApplication": _link("withdraw_application", "withdraw it", **_APPLICATION_ID),
    "RequestManualReview": _link(
        "request_manual_review", "send it to an analyst", **_APPLICATION_ID
    ),
    "RecordAgentAction": _link(
        "record_agent_action", "record what an agent did on it", **_APPLICATION_ID
    ),
    "GetScoreReconstruction": _link(
        "get_score_reconstruction", "its scores, recomputed", **_APPLICATION_ID
    ),
    "GetDecisionRecord": _link("get_decision_record", "its decision record", **_APPLICATION_ID),
}
_SEAL_LINKS = {
    "GetConsistencyProof": _link(
        "get_consistency_proof",
        "the seal against itself (an empty path)",
        **{"query.first": "$response.body#/tree_size", "query.second": "$response.body#/tree_size"},
    ),
}

LINKS: dict[tuple[str, str], dict[str, Any]] = {
    ("submit_application", "200"): _APPLICATION_LINKS,
    ("review_application", "200"): _APPLICATION_LINKS,
    ("withdraw_application", "200"): _APPLICATION_LINKS,
    ("request_manual_review", "200"): _APPLICATION_LINKS,
    ("get_application", "200"): {
        "ReviewApplication": _link(
            "review_application",
            "an analyst decides it, at the version in ETag",
            **_APPLICATION_ID,
            **{"header.If-Match": "$response.header.ETag"},
        ),
        "GetApplicationEvents": _APPLICATION_LINKS["GetApplicationEvents"],
    },
    ("get_review_queue", "200"): {
        "ReviewApplication": _link(
            "review_application",
            "an analyst decides the first application waiting",
            **{
                "path.application_id": "$response.body#/items/0/application_id",
                "header.If-Match": '"{$response.body#/items/0/stream_version}"',
            },
        ),
        "GetApplication": _link(
            "get_application",
            "the first application waiting",
            **{"path.application_id": "$response.body#/items/0/application_id"},
        ),
    },
    ("get_event_feed", "200"): {
        "GetInclusionProof": _link(
            "get_inclusion_proof",
            "the first event's inclusion proof",
            **{"path.position": "$response.body#/0/position"},
        ),
    },
    ("create_seal", "201"): _SEAL_LINKS,
    ("get_latest_seal", "200"): _SEAL_LINKS,
    ("create_api_key", "201"): {
        "RevokeApiKey": _link(
            "revoke_api_key", "revoke the key just created", **{"path.key_id": "$response.body#/id"}
        ),
    },
}


def _roles_text(roles: list[Role]) -> str:
    return "**Roles:** " + ", ".join(f"`{role}`" for role in roles) + "."


def describe(document: dict[str, Any]) -> dict[str, Any]:
    """Adds the security schemes, each operation's roles, its 401/403 problems, and links
    to FastAPI's document (in place; returns it)."""
    document["info"]["description"] = DESCRIPTION
    document.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    for item in document["paths"].values():
        for operation in item.values():
            operation_id = operation["operationId"]
            responses = operation["responses"]
            for parameter in operation.get("parameters", []):
                parameter["schema"] = _never_null(parameter["schema"])
            if operation_id in PUBLIC_OPERATIONS:
                operation["security"] = []
                operation["x-roles"] = []
                note = "**No key needed.**"
            else:
                roles = roles_for(operation_id)
                operation["security"] = copy.deepcopy(SECURED)
                operation["x-roles"] = [role.value for role in roles]
                note = _roles_text(roles)
                responses.setdefault("401", _problem(401))
                if len(roles) < len(Role) or operation_id in NEVER_OPEN:
                    responses.setdefault("403", _problem(403))
            text = operation.get("description", "")
            operation["description"] = f"{text}\n\n{note}" if text else note
            for (linked, status), links in LINKS.items():
                if linked == operation_id and status in responses:
                    responses[status]["links"] = copy.deepcopy(links)
            operation["responses"] = dict(sorted(responses.items()))
    return document


def _never_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter that may be left out is `T | None` in Python, which FastAPI publishes as
    `anyOf: [T, null]`; but a query, path or header value is text, never JSON null, and
    leaving it out is said by `required: false`. So: T."""
    variants = schema.get("anyOf")
    if not variants or {"type": "null"} not in variants:
        return schema
    rest = [variant for variant in variants if variant != {"type": "null"}]
    outer = {key: value for key, value in schema.items() if key != "anyOf"}
    return {**outer, **rest[0]} if len(rest) == 1 else {**outer, "anyOf": rest}


def _problem(code: int) -> dict[str, Any]:
    response = problem_response(code)
    return {
        "description": response["description"],
        "content": {
            media_type: {"schema": {"$ref": "#/components/schemas/Problem"}}
            for media_type in response["content"]
        },
    }


def open_mode_variant(document: dict[str, Any]) -> dict[str, Any]:
    """The document as it stands in open mode: the key is optional on every operation that
    anonymous callers may call then."""
    variant = copy.deepcopy(document)
    for item in variant["paths"].values():
        for operation in item.values():
            if operation["security"] and operation["operationId"] not in NEVER_OPEN:
                operation["security"].append(OPEN_MODE_OPTIONAL)
    return variant


def install(app: FastAPI) -> None:
    """`app.openapi()` returns the described (keyed) document."""

    def openapi() -> dict[str, Any]:
        if not app.openapi_schema:
            app.openapi_schema = describe(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
