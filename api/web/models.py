"""Models that exist only on the HTTP side: problem+json bodies (documented for every
error status) and the health probes' answer. The service's own values are in
api/service/models.py."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Health(BaseModel):
    status: str
    detail: str | None = None


class Problem(BaseModel):
    """RFC 9457 problem details (media type application/problem+json)."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[dict[str, str]] | None = None
    current_status: str | None = Field(
        default=None, description="409 for a transition: the application's status now"
    )
    current_version: int | None = Field(
        default=None, description="409 for a stale version: the stream's version now"
    )
