"""The typed Python client of the lending-ledger HTTP API: `LedgerClient` and the
shapes it returns. It depends on nothing of the server (httpx and exact JSON only)."""

from api.client.ledger_client import (
    ApiKeyInfo,
    Application,
    ConsistencyProof,
    CreatedApiKey,
    Evaluation,
    Event,
    Health,
    InclusionProof,
    LedgerAPIError,
    LedgerClient,
    ProjectionStatus,
    PublicKey,
    RebuildAccepted,
    ScoreReconstructionReport,
    Seal,
    StreamedEvent,
)

__all__ = [
    "ApiKeyInfo",
    "Application",
    "ConsistencyProof",
    "CreatedApiKey",
    "Evaluation",
    "Event",
    "Health",
    "InclusionProof",
    "LedgerAPIError",
    "LedgerClient",
    "ProjectionStatus",
    "PublicKey",
    "RebuildAccepted",
    "ScoreReconstructionReport",
    "Seal",
    "StreamedEvent",
]
