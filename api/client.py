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
        api_key: str | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self._http = httpx.AsyncClient(
            base_url=base_url, transport=transport, timeout=timeout, headers=headers
        )
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

    async def _write(
        self,
        path: str,
        body: Json,
        *,
        idempotency_key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """POST with an Idempotency-Key (a new one unless given): retries reuse it, so a
        retried write is applied at most once."""
        key = idempotency_key or str(uuid.uuid4())
        return await self._request(
            "POST", path, json=body, headers={"Idempotency-Key": key, **(headers or {})}
        )

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
        result: Json = await self._write("/lending/apply", body, idempotency_key=idempotency_key)
        return result

    async def review(
        self,
        application_id: str,
        outcome: Literal["approved", "declined"],
        *,
        expected_version: int,
        justification: str,
        reason_codes: list[str] | None = None,
        idempotency_key: str | None = None,
    ) -> Json:
        """An analyst's decision on an application in review, at the version they saw."""
        body = {
            "outcome": outcome,
            "reason_codes": reason_codes or [],
            "justification": justification,
            "expected_version": expected_version,
        }
        result: Json = await self._write(
            f"/lending/applications/{application_id}/review",
            body,
            idempotency_key=idempotency_key,
        )
        return result

    async def withdraw(
        self,
        application_id: str,
        reason: str,
        *,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> Json:
        body: Json = {"reason": reason, "expected_version": expected_version}
        result: Json = await self._write(
            f"/lending/applications/{application_id}/withdraw",
            body,
            idempotency_key=idempotency_key,
        )
        return result

    async def request_manual_review(
        self,
        application_id: str,
        reason: str,
        *,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> Json:
        body: Json = {"reason": reason, "expected_version": expected_version}
        result: Json = await self._write(
            f"/lending/applications/{application_id}/manual-review",
            body,
            idempotency_key=idempotency_key,
        )
        return result

    async def record_agent_action(
        self,
        application_id: str,
        *,
        agent_id: str,
        model_name: str,
        output: str,
        action: Literal["request_more_data", "manual_review", "auto_process", "other"],
        rationale: str,
        prompt: str | None = None,
        prompt_sha256: str | None = None,
        prompt_ref: str | None = None,
        idempotency_key: str | None = None,
    ) -> Json:
        body: Json = {
            "agent_id": agent_id,
            "model_name": model_name,
            "prompt": prompt,
            "prompt_sha256": prompt_sha256,
            "prompt_ref": prompt_ref,
            "output": output,
            "action": action,
            "rationale": rationale,
        }
        result: Json = await self._write(
            f"/lending/applications/{application_id}/agent-actions",
            body,
            idempotency_key=idempotency_key,
        )
        return result

    async def review_queue(
        self,
        status: Literal["pending", "completed"] = "pending",
        *,
        limit: int = 20,
        cursor: str | None = None,
    ) -> Json:
        """One page: {"items": [...], "next_cursor": ...}."""
        params: dict[str, str | int] = {"status": status, "limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        result: Json = await self._request("GET", "/lending/reviews", params=params)
        return result

    async def reason_codes(self, model: str | None = None) -> list[Json]:
        params = {"model": model} if model else None
        result: list[Json] = await self._request("GET", "/lending/reason-codes", params=params)
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
