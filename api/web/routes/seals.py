"""Audit routes for seals: the public key, seals, inclusion and consistency proofs.

How to check what these return without our code: docs/architecture.md, "Seals and proofs".
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field

from api.service.audit_models import SealOut
from api.service.models import Event
from api.web.dependencies import Digits, PoolDep, ServiceDep, problem_responses
from api.web.responses import ExactJSONRoute, JSONResponse
from ledger.errors import NotFound, NotYetSealed
from ledger.merkle import leaf_hash
from ledger.seals import (
    consistency_proof,
    create_seal,
    inclusion_proof,
    latest_seal,
    system_clock,
)
from ledger.signing import ALGORITHM, public_key_base64, public_key_pem

router = APIRouter(route_class=ExactJSONRoute, default_response_class=JSONResponse)

MAX_BIGINT = 2**63 - 1


class PublicKeyOut(BaseModel):
    algorithm: str = Field(description="always Ed25519")
    key_id: str = Field(description="SHA-256 of the raw public key, lowercase hex")
    public_key: str = Field(description="the raw 32-byte public key, base64")
    public_key_pem: str = Field(description="the same key as PEM (SubjectPublicKeyInfo)")


class InclusionProofOut(BaseModel):
    """The event, and the audit path from its leaf to the latest seal's root."""

    event: Event
    seq: int
    leaf_index: int = Field(description="seq - 1")
    tree_size: int = Field(description="the seal's tree size")
    leaf_hash: str = Field(description="SHA-256(0x00 || event hash), lowercase hex")
    audit_path: list[str] = Field(description="RFC 9162 inclusion path, leaf upwards, hex")
    seal: SealOut


class ConsistencyProofOut(BaseModel):
    """RFC 9162 consistency proof: the second seal's tree extends the first's."""

    first: SealOut
    second: SealOut
    consistency_path: list[str] = Field(description="RFC 9162 consistency path, hex")


@router.get(
    "/audit/public-key",
    operation_id="get_public_key",
    summary="The Ed25519 public key that signs seals",
    response_model=PublicKeyOut,
    responses=problem_responses(),
)
async def public_key(service: ServiceDep) -> JSONResponse:
    key = service.signing_key
    return JSONResponse(
        PublicKeyOut(
            algorithm=ALGORITHM,
            key_id=key.key_id,
            public_key=public_key_base64(key.public_key),
            public_key_pem=public_key_pem(key.public_key),
        )
    )


@router.get(
    "/audit/seals/latest",
    operation_id="get_latest_seal",
    summary="The latest seal",
    response_model=SealOut,
    responses=problem_responses(404),
)
async def get_latest_seal(pool: PoolDep) -> JSONResponse:
    async with pool.acquire() as connection:
        seal = await latest_seal(connection)
    if seal is None:
        raise NotFound("nothing has been sealed yet")
    return JSONResponse(SealOut.from_seal(seal))


@router.post(
    "/audit/seals",
    operation_id="create_seal",
    summary="Seal every sequenced event not sealed yet, now",
    response_model=SealOut,
    status_code=201,
    responses={
        **problem_responses(409),
        200: {"model": SealOut, "description": "nothing new: the latest seal"},
    },
)
async def post_seal(service: ServiceDep, pool: PoolDep) -> JSONResponse:
    """201 with the new seal; 200 with the latest seal when every sequenced event is sealed
    already; 409 `not-yet-sealed` when the ledger log is still empty."""
    async with pool.acquire() as connection:
        async with connection.transaction():
            seal = await create_seal(connection, service.signing_key, system_clock)
            created = seal is not None
            if seal is None:
                seal = await latest_seal(connection)
        if created and seal is not None and service.witness is not None:
            await service.witness.record(connection, seal)  # after the commit
    if seal is None:
        raise NotYetSealed("nothing to seal: the ledger log is empty")
    return JSONResponse(SealOut.from_seal(seal), status_code=201 if created else 200)


@router.get(
    "/audit/events/{position}/proof",
    operation_id="get_inclusion_proof",
    summary="An inclusion proof of the event in the latest seal",
    response_model=InclusionProofOut,
    responses=problem_responses(404, 409, 422),
)
async def get_inclusion_proof(
    position: Annotated[int, Path(ge=1, le=MAX_BIGINT, description="the event's position"), Digits],
    pool: PoolDep,
) -> JSONResponse:
    """404 for an unknown position; 409 `not-yet-sealed` when the latest seal does not
    cover the event yet (or it has no seq yet): retry after the next seal."""
    async with pool.acquire() as connection:
        proof = await inclusion_proof(connection, position)
    seq = proof.leaf_index + 1
    return JSONResponse(
        InclusionProofOut(
            event=Event.from_recorded(proof.event),
            seq=seq,
            leaf_index=proof.leaf_index,
            tree_size=proof.seal.tree_size,
            leaf_hash=leaf_hash(proof.event.hash).hex(),
            audit_path=[node.hex() for node in proof.audit_path],
            seal=SealOut.from_seal(proof.seal),
        )
    )


@router.get(
    "/audit/seals/consistency",
    operation_id="get_consistency_proof",
    summary="A consistency proof between two seals",
    response_model=ConsistencyProofOut,
    responses=problem_responses(404, 422),
)
async def get_consistency_proof(
    first: Annotated[
        int,
        Query(
            ge=1,
            le=MAX_BIGINT,
            description="tree size of a seal; not greater than `second` (422 "
            "`validation-error` naming `first` otherwise, a rule the schema cannot state)",
        ),
        Digits,
    ],
    second: Annotated[
        int, Query(ge=1, le=MAX_BIGINT, description="tree size of the same or a later seal"), Digits
    ],
    pool: PoolDep,
) -> JSONResponse:
    """Both sizes must be tree sizes of seals (404 otherwise), first <= second (422)."""
    if first > second:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("query", "first"),
                    "msg": f"must not be greater than second ({second})",
                    "input": first,
                }
            ]
        )
    async with pool.acquire() as connection:
        proof = await consistency_proof(connection, first, second)
    return JSONResponse(
        ConsistencyProofOut(
            first=SealOut.from_seal(proof.first),
            second=SealOut.from_seal(proof.second),
            consistency_path=[node.hex() for node in proof.path],
        )
    )
