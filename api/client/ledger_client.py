"""An async Python client for the lending-ledger HTTP API, for agents and scripts.

Money comes back as Decimal (responses are parsed exactly). Writes carry an
Idempotency-Key (generated when the caller gives none) and are retried with the same key
on connection errors and 503s, so a retry can never apply twice.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, Literal, NotRequired, TypedDict

import httpx

from api.jsonio import loads_exact

Json = dict[str, Any]
# An exact JSON number: Decimal when it has a fraction (1830.00), int when not (650).
Number = Decimal | int
QueryValue = str | int | datetime | Sequence[str] | None
Role = Literal["admin", "agent", "analyst", "auditor"]


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
    risk_score: NotRequired[Number]


# Response shapes as parsed from JSON (api/service/models.py has the server's models): ids and
# times are strings, money is exact (Number).


class Application(TypedDict):
    application_id: str
    applicant_id: str
    amount: Number
    income: Number
    employment_years: int
    risk_score: Number | None
    decision: str | None
    status: str
    scoring_model: str | None
    reason_codes: list[str]
    recommended_outcome: str | None
    submitted_by: str
    decided_by: str | None
    in_review_since: str | None
    reviewed_at: str | None
    created_at: str
    updated_at: str
    stream_version: int


class Event(TypedDict):
    position: int
    seq: int | None
    stream_id: str
    stream_version: int
    event_id: str
    type: str
    schema_version: int
    data: Json
    metadata: Json
    recorded_at: str
    prev_hash: str
    hash: str


class StreamedEvent(TypedDict):
    """One Server-Sent Event of GET /events/stream: `id` is the event's seq."""

    id: int
    event: str
    data: Event


class Health(TypedDict):
    status: str
    detail: NotRequired[str | None]


class Seal(TypedDict):
    tree_size: int
    root_hash: str
    previous_seal_hash: str
    sealed_at: str
    key_id: str
    signature: str
    seal_hash: str


class PublicKey(TypedDict):
    algorithm: str
    key_id: str
    public_key: str
    public_key_pem: str


class InclusionProof(TypedDict):
    event: Event
    seq: int
    leaf_index: int
    tree_size: int
    leaf_hash: str
    audit_path: list[str]
    seal: Seal


class ConsistencyProof(TypedDict):
    first: Seal
    second: Seal
    consistency_path: list[str]


class ApiKeyInfo(TypedDict):
    id: str
    name: str
    role: Role
    created_at: str
    revoked_at: str | None


class CreatedApiKey(ApiKeyInfo):
    key: str


class ScoreReconstructionReport(TypedDict):
    application_id: str
    scores: list[Json]


class ProjectionStatus(TypedDict):
    name: str
    mode: Literal["inline", "runner"]
    tables: list[str]
    checkpoint: int | None
    log_head: int
    last_rebuild: Json | None


class RebuildAccepted(TypedDict):
    projection: str
    status: str
    status_url: str


def _query(**values: QueryValue) -> dict[str, str | int | list[str]]:
    """Query parameters without the unset ones; times as RFC 3339, lists repeated."""
    query: dict[str, str | int | list[str]] = {}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, datetime):
            if value.tzinfo is None:
                raise ValueError(f"{name} must be a timezone-aware datetime")
            query[name] = value.isoformat()
        elif isinstance(value, str | int):
            query[name] = value
        else:
            query[name] = list(value)
    return query


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
    def _parse_error(response: httpx.Response) -> None:
        if response.is_error:
            body = loads_exact(response.content) if response.content else None
            raise LedgerAPIError(response.status_code, body if isinstance(body, dict) else {})

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
    ) -> Application:
        body = {
            "applicant_id": applicant_id,
            "amount": str(amount),  # a decimal string: exact, whatever the caller's type
            "income": str(income),
            "employment_years": employment_years,
        }
        result: Application = await self._write(
            "/lending/apply", body, idempotency_key=idempotency_key
        )
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
    ) -> Application:
        """An analyst's decision on an application in review, at the version they saw."""
        body = {
            "outcome": outcome,
            "reason_codes": reason_codes or [],
            "justification": justification,
            "expected_version": expected_version,
        }
        result: Application = await self._write(
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
    ) -> Application:
        body: Json = {"reason": reason, "expected_version": expected_version}
        result: Application = await self._write(
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
    ) -> Application:
        body: Json = {"reason": reason, "expected_version": expected_version}
        result: Application = await self._write(
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

    async def _get(self, path: str, **query: QueryValue) -> Any:
        return await self._request("GET", path, params=_query(**query))

    async def review_queue(
        self,
        status: Literal["pending", "completed"] = "pending",
        *,
        limit: int = 20,
        cursor: str | None = None,
    ) -> Json:
        """One page: {"items": [...], "next_cursor": ...}."""
        result: Json = await self._get(
            "/lending/reviews", status=status, limit=limit, cursor=cursor
        )
        return result

    async def reason_codes(self, model: str | None = None) -> list[Json]:
        result: list[Json] = await self._get("/lending/reason-codes", model=model or None)
        return result

    async def history(
        self, applicant_id: str, limit: int = 10, *, as_of: datetime | None = None
    ) -> list[Application]:
        """Newest first; with `as_of` (timezone-aware), as the ledger stood then."""
        result: list[Application] = await self._get(
            f"/lending/applicants/{applicant_id}/history", limit=limit, as_of=as_of
        )
        return result

    async def application(
        self,
        application_id: str,
        *,
        as_of: datetime | None = None,
        at_position: int | None = None,
    ) -> Application:
        """The current state; with `as_of` (timezone-aware) or `at_position` (a global event
        position), the state folded from the events up to then."""
        result: Application = await self._get(
            f"/lending/applications/{application_id}", as_of=as_of, at_position=at_position
        )
        return result

    async def application_events(self, application_id: str) -> list[Json]:
        result: list[Json] = await self._get(f"/lending/applications/{application_id}/events")
        return result

    async def decision_record(
        self, application_id: str, format: Literal["json", "html"] = "json"
    ) -> Any:
        """The full decision record (auditor): a JSON document, or with format="html" the
        one-page HTML report as text."""
        if format == "html":
            response = await self._http.get(
                f"/audit/applications/{application_id}/record", params={"format": "html"}
            )
            if response.is_error:
                self._parse(response)
            return response.text
        result: Json = await self._request("GET", f"/audit/applications/{application_id}/record")
        return result

    async def events(self, after: int = 0, limit: int = 100) -> list[Json]:
        result: list[Json] = await self._get("/events", after=after, limit=limit)
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
        }
        if newest["decision"] is not None:
            details["decision"] = newest["decision"]
        if newest["risk_score"] is not None:
            details["risk_score"] = newest["risk_score"]
        if newest["decision"] == "review":
            details["action"] = "manual_review"
            details["reason"] = "newest application is waiting for review"
        return details

    # --- Health ---

    async def health(self) -> Health:
        result: Health = await self._get("/healthz")
        return result

    async def readiness(self) -> Health:
        """One attempt, never raising for 503: `status` is ok, starting, unavailable, or
        the problem type of a sequencer that is missing or behind (no-sequencer,
        sequencer-lagging)."""
        response = await self._http.get("/readyz")
        if response.status_code == 503:
            body = loads_exact(response.content)
            if response.headers.get("content-type", "").startswith("application/problem+json"):
                return Health(status=str(body["type"]).rsplit(":", 1)[-1], detail=body["detail"])
            unready: Health = body
            return unready
        result: Health = self._parse(response)
        return result

    async def metrics(self) -> str:
        """The Prometheus text exposition (auditors and admins)."""
        response = await self._http.get("/metrics")
        self._parse_error(response)
        return response.text

    # --- Audit: score reconstruction and seals ---

    async def score_reconstruction(self, application_id: str) -> ScoreReconstructionReport:
        """Every recorded score of the application, recomputed and compared."""
        result: ScoreReconstructionReport = await self._get(
            f"/audit/applications/{application_id}/scores"
        )
        return result

    async def public_key(self) -> PublicKey:
        result: PublicKey = await self._get("/audit/public-key")
        return result

    async def latest_seal(self) -> Seal:
        result: Seal = await self._get("/audit/seals/latest")
        return result

    async def create_seal(self) -> Seal:
        """Seal every sequenced event not sealed yet; the latest seal when there are none.
        Safe to retry: a retry finds the events sealed and answers with that seal."""
        result: Seal = await self._request("POST", "/audit/seals")
        return result

    async def inclusion_proof(self, position: int) -> InclusionProof:
        """409 `not-yet-sealed` until a seal covers the event at this global position."""
        result: InclusionProof = await self._get(f"/audit/events/{position}/proof")
        return result

    async def consistency_proof(self, first: int, second: int) -> ConsistencyProof:
        """Between the seals of tree sizes `first` <= `second`."""
        result: ConsistencyProof = await self._get(
            "/audit/seals/consistency", first=first, second=second
        )
        return result

    # --- Admin: API keys and projections ---

    async def create_api_key(self, name: str, role: Role) -> CreatedApiKey:
        """One attempt, never retried: the service does not replay key creation (that
        would mean storing the key), so a retry could leave a second key. After an error
        that may have reached the service, list the keys and revoke any extra one."""
        response = await self._http.post("/admin/keys", json={"name": name, "role": role})
        result: CreatedApiKey = self._parse(response)
        return result

    async def api_keys(self) -> list[ApiKeyInfo]:
        """Every key, revoked ones included (never a secret)."""
        result: list[ApiKeyInfo] = await self._get("/admin/keys")
        return result

    async def revoke_api_key(self, key_id: str) -> ApiKeyInfo:
        """Idempotent: revoking a revoked key changes nothing."""
        result: ApiKeyInfo = await self._request("DELETE", f"/admin/keys/{key_id}")
        return result

    async def projections(self) -> list[ProjectionStatus]:
        result: list[ProjectionStatus] = await self._get("/admin/projections")
        return result

    async def rebuild_projection(self, name: str) -> RebuildAccepted:
        """Starts a rebuild in the background; follow it with `projections()`."""
        result: RebuildAccepted = await self._request("POST", f"/admin/projections/{name}/rebuild")
        return result

    # --- The live feed ---

    async def stream_events(
        self,
        after: int = 0,
        *,
        types: Sequence[str] | None = None,
        idle_timeout: float = 60.0,
    ) -> AsyncIterator[StreamedEvent]:
        """GET /events/stream: every event after seq `after` (of `types` only, if given),
        then live ones, until the caller stops iterating.

        A dropped connection is resumed with Last-Event-ID = the last id yielded, so no
        event is missed or repeated (a half-received event is dropped and sent again).
        Connection errors, 503s and clean ends are retried with backoff, up to the client's
        `retries` times in a row without progress (the count restarts whenever an event or
        keep-alive arrives); then the last error is raised. `idle_timeout` must exceed the
        server's keep-alive interval (15 s by default): that long without a byte is a drop.
        """
        last_id = after
        failures = 0
        timeout = httpx.Timeout(self._http.timeout.connect, read=idle_timeout)
        params = _query(after=after, types=types)
        while True:
            # The server resumes after Last-Event-ID when given (it wins over ?after=).
            headers = {"Last-Event-ID": str(last_id)} if last_id != after else {}
            progressed = False
            try:
                async with self._http.stream(
                    "GET", "/events/stream", params=params, headers=headers, timeout=timeout
                ) as response:
                    if response.is_error:
                        await response.aread()
                        if response.status_code != 503 or failures >= self._retries:
                            self._parse(response)  # raises LedgerAPIError
                    else:
                        async for item in _sse_events(response):
                            progressed = True
                            if item is not None:
                                last_id = item["id"]
                                yield item
            except httpx.TransportError:
                if failures >= self._retries and not progressed:
                    raise
            failures = 0 if progressed else failures + 1
            if failures > self._retries:
                raise ConnectionError(f"/events/stream ended {failures} times without an event")
            await asyncio.sleep(self._backoff * 2 ** max(failures - 1, 0))


async def _sse_events(response: httpx.Response) -> AsyncIterator[StreamedEvent | None]:
    """The events of a text/event-stream response, and None for each comment (keep-alive).
    An event is dispatched at its blank line only, so one cut short is never yielded."""
    fields: dict[str, str] = {}
    data: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                event: Event = loads_exact("\n".join(data))
                yield {
                    "id": int(fields["id"]),
                    "event": fields.get("event", "message"),
                    "data": event,
                }
            fields, data = {}, []
        elif line.startswith(":"):
            yield None
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            else:
                fields[name] = value
