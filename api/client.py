"""An async Python client for the lending-ledger HTTP API, for agents and scripts.

Money comes back as Decimal (responses are parsed exactly). Writes carry an
Idempotency-Key (generated when the caller gives none) and are retried with the same key
on connection errors and 503s, so a retry can never apply twice.
"""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from types import TracebackType
from typing import Any, Literal, NotRequired, TypedDict

import httpx

from api.jsonio import loads_exact

Json = dict[str, Any]


class LedgerAPIError(Exception):
    """A problem+json answer from the service."""

    def __init__(self, status: int, problem: Json) -> None:
        super().__init__(f"{status}: {problem.get('detail', problem)}")
        self.status = status
        self.problem = problem


class Evaluation(TypedDict):
    action: Literal["request_more_data", "manual_review", "auto_process"]
    applicant_id: str
    reason: str
    application_id: NotRequired[str]
    decision: NotRequired[str]
    risk_score: NotRequired[Decimal]


class LedgerClient:
    def __init__(
        self,
        base_url: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.2,
    ) -> None:
        self._http = httpx.AsyncClient(base_url=base_url, transport=transport, timeout=timeout)
        self._retries = retries
        self._backoff = backoff

    async def __aenter__(self) -> LedgerClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        attempt = 0
        while True:
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError:
                if attempt >= self._retries:
                    raise
            else:
                if response.status_code != 503 or attempt >= self._retries:
                    return self._parse(response)
            attempt += 1
            await asyncio.sleep(self._backoff * 2 ** (attempt - 1))

    @staticmethod
    def _parse(response: httpx.Response) -> Any:
        body = loads_exact(response.content) if response.content else None
        if response.is_error:
            raise LedgerAPIError(response.status_code, body if isinstance(body, dict) else {})
        return body

    async def apply(
        self,
        applicant_id: str,
        amount: Decimal | int | str,
        income: Decimal | int | str,
        employment_years: int,
        *,
        idempotency_key: str | None = None,
    ) -> Json:
        body = {
            "applicant_id": applicant_id,
            "amount": str(amount),  # a decimal string: exact, whatever the caller's type
            "income": str(income),
            "employment_years": employment_years,
        }
        key = idempotency_key or str(uuid.uuid4())
        result: Json = await self._request(
            "POST", "/lending/apply", json=body, headers={"Idempotency-Key": key}
        )
        return result

    async def history(self, applicant_id: str, limit: int = 10) -> list[Json]:
        result: list[Json] = await self._request(
            "GET", f"/lending/applicants/{applicant_id}/history", params={"limit": limit}
        )
        return result

    async def application(self, application_id: str) -> Json:
        result: Json = await self._request("GET", f"/lending/applications/{application_id}")
        return result

    async def application_events(self, application_id: str) -> list[Json]:
        result: list[Json] = await self._request(
            "GET", f"/lending/applications/{application_id}/events"
        )
        return result

    async def events(self, after: int = 0, limit: int = 100) -> list[Json]:
        result: list[Json] = await self._request(
            "GET", "/events", params={"after": after, "limit": limit}
        )
        return result

    async def evaluate_borrower(self, applicant_id: str) -> Evaluation:
        """What an agent should do next for this applicant, from their history."""
        history = await self.history(applicant_id, limit=1)
        if not history:
            return {
                "action": "request_more_data",
                "applicant_id": applicant_id,
                "reason": "no applications on record",
            }
        newest = history[0]
        details: Evaluation = {
            "action": "auto_process",
            "applicant_id": applicant_id,
            "reason": f"newest application was {newest['decision']}",
            "application_id": newest["application_id"],
            "decision": newest["decision"],
            "risk_score": newest["risk_score"],
        }
        if newest["decision"] == "review":
            details["action"] = "manual_review"
            details["reason"] = "newest application is waiting for review"
        return details
