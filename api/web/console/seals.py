"""Seals and proofs for auditors, checked in the browser itself.

The page loads the JSON below (the same documents as GET /audit/public-key,
/audit/seals/latest, /audit/events/{position}/proof and /audit/seals/consistency, served
under /console for a signed-in auditor) and static/verify.js recomputes everything with
WebCrypto: the seal's Ed25519 signature and seal hash, the event's hash from its content,
the inclusion path to the signed root and the consistency path between two seals. The
server only supplies data; the page says which results it computed itself.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from api.service.audit_models import SealOut
from api.service.models import Event
from api.web.console import sql
from api.web.console.base import PREFIX, ConsoleRoute, redirect, render, service_of
from api.web.responses import JSONResponse
from ledger.errors import LedgerError, NotFound, NotYetSealed
from ledger.merkle import leaf_hash
from ledger.seals import consistency_proof, inclusion_proof, latest_seal
from ledger.signing import ALGORITHM, public_key_base64

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

MAX_BIGINT = 2**63 - 1
JSON_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def _json(content: Any, status_code: int = 200) -> JSONResponse:
    return JSONResponse(content, status_code=status_code, headers=JSON_HEADERS)


def _failure(error: LedgerError) -> JSONResponse:
    status = 409 if isinstance(error, NotYetSealed) else 404 if isinstance(error, NotFound) else 422
    return _json({"detail": str(error), "status": status}, status)


@router.get(f"{PREFIX}/seals", operation_id="console_seals")
async def seals_page(
    request: Request, position: Annotated[int | None, Query(ge=1, le=MAX_BIGINT)] = None
) -> Response:
    if position is not None:
        return redirect(f"{PREFIX}/ledger/events/{position}")
    service = service_of(request)
    async with service.pool.acquire() as connection:
        seal = await latest_seal(connection)
        recent = await connection.fetch(sql.SELECT_SEALS, 50)
    return render(
        request,
        "seals.html",
        seal=SealOut.from_seal(seal) if seal is not None else None,
        recent=recent,
        key_id=service.signing_key.key_id,
        position=position,
    )


@router.get(f"{PREFIX}/audit/public-key.json", operation_id="console_public_key_json")
async def public_key(request: Request) -> Response:
    key = service_of(request).signing_key
    return _json(
        {
            "algorithm": ALGORITHM,
            "key_id": key.key_id,
            "public_key": public_key_base64(key.public_key),
        }
    )


@router.get(f"{PREFIX}/audit/seals/latest.json", operation_id="console_latest_seal_json")
async def latest(request: Request) -> Response:
    async with service_of(request).pool.acquire() as connection:
        seal = await latest_seal(connection)
    if seal is None:
        return _json({"detail": "nothing has been sealed yet", "status": 404}, 404)
    return _json(SealOut.from_seal(seal))


@router.get(
    f"{PREFIX}/audit/events/{{position}}/proof.json", operation_id="console_inclusion_proof_json"
)
async def proof(request: Request, position: int) -> Response:
    if not 1 <= position <= MAX_BIGINT:
        return _json({"detail": "no such position", "status": 404}, 404)
    try:
        async with service_of(request).pool.acquire() as connection:
            found = await inclusion_proof(connection, position)
    except LedgerError as error:
        return _failure(error)
    return _json(
        {
            "event": Event.from_recorded(found.event).model_dump(),
            "seq": found.leaf_index + 1,
            "leaf_index": found.leaf_index,
            "tree_size": found.seal.tree_size,
            "leaf_hash": leaf_hash(found.event.hash).hex(),
            "audit_path": [node.hex() for node in found.audit_path],
            "seal": SealOut.from_seal(found.seal).model_dump(),
        }
    )


@router.get(f"{PREFIX}/audit/seals/consistency.json", operation_id="console_consistency_proof_json")
async def consistency(
    request: Request,
    first: Annotated[int, Query(ge=1, le=MAX_BIGINT)],
    second: Annotated[int, Query(ge=1, le=MAX_BIGINT)],
) -> Response:
    if first > second:
        return _json({"detail": "first must not be greater than second", "status": 422}, 422)
    try:
        async with service_of(request).pool.acquire() as connection:
            found = await consistency_proof(connection, first, second)
    except LedgerError as error:
        return _failure(error)
    return _json(
        {
            "first": SealOut.from_seal(found.first).model_dump(),
            "second": SealOut.from_seal(found.second).model_dump(),
            "consistency_path": [node.hex() for node in found.path],
        }
    )
