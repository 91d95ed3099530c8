"""The Python client (api/client/): one method per operation of the app, time travel,
audit, admin and health calls, and the SSE iterator's resume after a dropped connection."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from decimal import Decimal

import httpx
import pytest
from fastapi import FastAPI

from api.client import LedgerAPIError, LedgerClient, StreamedEvent
from api.service.access import Role
from ledger.merkle import leaf_hash, verify_consistency, verify_inclusion
from tests.conftest import MakeDatabase, new_applicant
from tests.integration.test_stream import expected_feed, running_app
from tests.support.helpers import wait_until_sequenced
from tests.support.keyed import keyed_app

DEADLINE = 30.0

# operation_id -> LedgerClient method. A new route fails this file until the client has it.
CLIENT_METHODS = {
    "submit_application": "apply",
    "get_applicant_history": "history",
    "get_application": "application",
    "get_application_events": "application_events",
    "get_event_feed": "events",
    "stream_events": "stream_events",
    "get_health": "health",
    "get_readiness": "readiness",
    "get_metrics": "metrics",
    "review_application": "review",
    "withdraw_application": "withdraw",
    "request_manual_review": "request_manual_review",
    "record_agent_action": "record_agent_action",
    "get_review_queue": "review_queue",
    "get_reason_codes": "reason_codes",
    "get_score_reconstruction": "score_reconstruction",
    "get_decision_record": "decision_record",
    "get_public_key": "public_key",
    "get_latest_seal": "latest_seal",
    "create_seal": "create_seal",
    "get_inclusion_proof": "inclusion_proof",
    "get_consistency_proof": "consistency_proof",
    "list_api_keys": "api_keys",
    "create_api_key": "create_api_key",
    "revoke_api_key": "revoke_api_key",
    "get_projections": "projections",
    "rebuild_projection": "rebuild_projection",
}


@asynccontextmanager
async def ledger_for(app: FastAPI, api_key: str | None = None) -> AsyncIterator[LedgerClient]:
    transport = httpx.ASGITransport(app=app)
    async with LedgerClient("http://ledger.test", transport=transport, api_key=api_key) as ledger:
        yield ledger


async def test_every_operation_of_the_app_has_a_client_method(
    client: httpx.AsyncClient,
) -> None:
    document = (await client.get("/openapi.json")).json()
    operation_ids = {
        operation["operationId"]
        for path_item in document["paths"].values()
        for operation in path_item.values()
    }
    assert set(CLIENT_METHODS) == operation_ids
    for method in CLIENT_METHODS.values():
        assert callable(getattr(LedgerClient, method, None)), method


async def test_time_travel_reads_an_application_and_a_history_as_they_were(
    app: FastAPI,
) -> None:
    async with ledger_for(app) as ledger:
        applicant = new_applicant()
        in_review = await ledger.apply(applicant, "100000", "1000", 0)
        assert in_review["status"] == "in_review"
        application_id = in_review["application_id"]
        withdrawn = await ledger.withdraw(
            application_id, "no longer needed", expected_version=in_review["stream_version"]
        )
        assert withdrawn["status"] == "withdrawn"
        events = await ledger.application_events(application_id)
        decided = events[in_review["stream_version"] - 1]

        at_position = await ledger.application(application_id, at_position=decided["position"])
        assert at_position["status"] == "in_review"
        assert at_position["stream_version"] == in_review["stream_version"]
        assert at_position["amount"] == Decimal("100000.00")
        recorded_at = datetime.fromisoformat(decided["recorded_at"])
        as_of = await ledger.application(application_id, as_of=recorded_at)
        assert as_of["status"] == "in_review"
        assert (await ledger.application(application_id))["status"] == "withdrawn"

        then = await ledger.history(applicant, as_of=recorded_at)
        assert [item["status"] for item in then] == ["in_review"]
        assert [item["status"] for item in await ledger.history(applicant)] == ["withdrawn"]

        with pytest.raises(ValueError, match="timezone-aware"):
            await ledger.history(applicant, as_of=datetime(2026, 1, 1))
        submitted = await ledger.application(application_id, at_position=events[0]["position"])
        assert (submitted["status"], submitted["risk_score"]) == ("submitted", None)


async def test_score_reconstruction_health_and_readiness(app: FastAPI) -> None:
    async with ledger_for(app) as ledger:
        applied = await ledger.apply(new_applicant(), "5000", "90000", 6)
        report = await ledger.score_reconstruction(applied["application_id"])
        assert report["application_id"] == applied["application_id"]
        assert [score["status"] for score in report["scores"]] == ["match"]
        assert report["scores"][0]["recorded"]["risk_score"] == applied["risk_score"]
        assert (await ledger.health())["status"] == "ok"
        assert (await ledger.readiness())["status"] == "ok"


async def test_seals_and_proofs_through_the_client(make_database: MakeDatabase) -> None:
    async with (
        keyed_app(make_database) as keyed,
        ledger_for(keyed.app, keyed.keys[Role.ADMIN]) as admin,
    ):
        with pytest.raises(LedgerAPIError) as unsealed:
            await admin.latest_seal()
        assert unsealed.value.status == 404
        first_application = await admin.apply(new_applicant(), "5000", "90000", 6)
        await wait_until_sequenced(keyed.pool)
        first = await admin.create_seal()
        assert first["tree_size"] == 3
        assert await admin.latest_seal() == first
        assert await admin.create_seal() == first  # nothing new: the same seal
        assert (await admin.public_key())["key_id"] == first["key_id"]

        event = (await admin.application_events(first_application["application_id"]))[1]
        proof = await admin.inclusion_proof(event["position"])
        assert proof["event"]["hash"] == event["hash"]
        assert proof["seal"] == first
        assert verify_inclusion(
            leaf_hash(bytes.fromhex(event["hash"])),
            proof["leaf_index"],
            proof["tree_size"],
            [bytes.fromhex(node) for node in proof["audit_path"]],
            bytes.fromhex(first["root_hash"]),
        )

        await admin.apply(new_applicant(), "6000", "90000", 6)
        await wait_until_sequenced(keyed.pool)
        second = await admin.create_seal()
        assert second["tree_size"] == 6
        consistency = await admin.consistency_proof(first["tree_size"], second["tree_size"])
        assert (consistency["first"], consistency["second"]) == (first, second)
        assert verify_consistency(
            first["tree_size"],
            second["tree_size"],
            bytes.fromhex(first["root_hash"]),
            bytes.fromhex(second["root_hash"]),
            [bytes.fromhex(node) for node in consistency["consistency_path"]],
        )


async def test_api_keys_and_projections_through_the_client(make_database: MakeDatabase) -> None:
    async with (
        keyed_app(make_database) as keyed,
        ledger_for(keyed.app, keyed.keys[Role.ADMIN]) as admin,
    ):
        created = await admin.create_api_key("client-test", "auditor")
        assert created["role"] == "auditor"
        assert created["revoked_at"] is None
        listed = {key["id"]: key for key in await admin.api_keys()}
        assert listed[created["id"]]["name"] == "client-test"
        assert "key" not in listed[created["id"]]

        async with ledger_for(keyed.app, created["key"]) as auditor:
            assert await auditor.events() == []
            revoked = await admin.revoke_api_key(created["id"])
            assert revoked["revoked_at"] is not None
            assert await admin.revoke_api_key(created["id"]) == revoked  # idempotent
            with pytest.raises(LedgerAPIError) as refused:
                await auditor.events()
            assert refused.value.status == 401

        projections = await admin.projections()
        assert "applications" in {projection["name"] for projection in projections}
        assert all(projection["mode"] in {"inline", "runner"} for projection in projections)
        with pytest.raises(LedgerAPIError) as unknown:
            await admin.rebuild_projection("no-such-projection")
        assert unknown.value.status == 404


class CuttableProxy:
    """A loopback TCP proxy whose open connections a test can cut, to drop a stream."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.requests: list[bytearray] = []
        self._writers: list[asyncio.StreamWriter] = []

    async def _pipe(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        record: bytearray | None = None,
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await source.read(65536):
                if record is not None:
                    record += data
                sink.write(data)
                await sink.drain()
        sink.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.target_port
        )
        self._writers += [writer, upstream_writer]
        request = bytearray()
        self.requests.append(request)
        await asyncio.gather(
            self._pipe(reader, upstream_writer, request), self._pipe(upstream_reader, writer)
        )

    def cut(self) -> None:
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            self.cut()
            server.close()
            await asyncio.wait_for(server.wait_closed(), DEADLINE)


async def test_the_stream_resumes_after_a_dropped_connection_without_gaps_or_repeats(
    make_database: MakeDatabase,
) -> None:
    async with running_app(make_database) as (_, base_url, pool):
        proxy = CuttableProxy(httpx.URL(base_url).port or 0)
        async with (
            proxy.serving() as proxy_url,
            LedgerClient(proxy_url, backoff=0.05) as reader,
            LedgerClient(base_url) as writer,
        ):
            for _ in range(2):
                await writer.apply(new_applicant(), "5000", "90000", 6)
            sequenced = await wait_until_sequenced(pool)
            seen: list[StreamedEvent] = []

            async def follow() -> None:
                nonlocal sequenced
                async for event in reader.stream_events():
                    seen.append(event)
                    if event["id"] == sequenced and len(proxy.requests) == 1:
                        proxy.cut()  # drop the connection, then write while it is down
                        for _ in range(2):
                            await writer.apply(new_applicant(), "7000", "90000", 6)
                        sequenced = await wait_until_sequenced(pool)
                    elif event["id"] == sequenced:
                        return

            await asyncio.wait_for(follow(), DEADLINE)

        assert [event["id"] for event in seen] == list(range(1, 13))
        assert len(proxy.requests) >= 2
        assert b"last-event-id: 6\r\n" in bytes(proxy.requests[-1]).lower()
        feed = await expected_feed(pool)
        assert [event["data"]["seq"] for event in seen] == [item["seq"] for item in feed]
        assert [event["event"] for event in seen] == [item["type"] for item in feed]
        assert [event["data"]["hash"] for event in seen] == [item["hash"] for item in feed]


async def test_the_stream_gives_up_after_its_retries() -> None:
    with socket.socket() as sock:  # a free port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with LedgerClient(f"http://127.0.0.1:{port}", retries=2, backoff=0.01) as ledger:
        with pytest.raises(httpx.ConnectError):
            await asyncio.wait_for(anext(ledger.stream_events()), DEADLINE)
