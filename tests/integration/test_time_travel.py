"""Time travel on real PostgreSQL: `?at_position=` and `?as_of=` answer exactly what the API
answered at that time, and the fold of the events up to any position; bad parameters are
422 problems, a point before the application existed is 404."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from api.jsonio import dumps, loads_exact, to_plain
from api.service.models import Application
from ledger.events import RecordedEvent
from projections.applications import fold_applications
from tests.conftest import MakeDatabase
from tests.support.helpers import assert_problem
from tests.support.workload import (
    Apply,
    Command,
    Service,
    commands,
    fresh_service,
    new_run,
    run_command,
)


def exact(response: httpx.Response) -> Any:
    """The body with its decimals exact (JSON numbers as Decimal, never float)."""
    assert response.status_code == 200, response.text
    return loads_exact(response.text)


@pytest.fixture(scope="module")
async def service(make_database: MakeDatabase) -> AsyncIterator[Service]:
    async with fresh_service(make_database) as running:
        yield running


@dataclass(frozen=True)
class Seen:
    """What the API answered right after one accepted command."""

    application_id: str
    applicant_id: str
    application: Any
    history: Any
    position: int  # the application's last event then
    recorded_at: str


async def events_of(client: httpx.AsyncClient, application_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/lending/applications/{application_id}/events")
    events: list[dict[str, Any]] = exact(response)
    return events


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(commands)
async def test_the_past_is_what_the_api_answered_then(
    service: Service, workload: list[Command]
) -> None:
    client = service.client
    run, submitted, seen = new_run(), list[str](), list[Seen]()
    for command in workload:
        outcome = await run_command(client, run, command, submitted)
        if not outcome.accepted:
            continue
        assert outcome.application_id is not None
        application = exact(await client.get(f"/lending/applications/{outcome.application_id}"))
        applicant = application["applicant_id"]
        history = exact(
            await client.get(f"/lending/applicants/{applicant}/history", params={"limit": 100})
        )
        last = (await events_of(client, outcome.application_id))[-1]
        seen.append(
            Seen(
                outcome.application_id,
                applicant,
                application,
                history,
                last["position"],
                last["recorded_at"],
            )
        )

    for then in seen:
        path = f"/lending/applications/{then.application_id}"
        at_position = await client.get(path, params={"at_position": then.position})
        assert exact(at_position) == then.application
        as_of = await client.get(path, params={"as_of": then.recorded_at})
        assert exact(as_of) == then.application
        history = await client.get(
            f"/lending/applicants/{then.applicant_id}/history",
            params={"as_of": then.recorded_at, "limit": 100},
        )
        assert exact(history) == then.history

    # And at every position inside a command: the fold of the events up to it.
    for application_id in submitted:
        events = await events_of(client, application_id)
        for count in range(1, len(events) + 1):
            folded, _ = fold_applications([recorded(e) for e in events[:count]])
            [row] = folded.values()
            expected = loads_exact(dumps(to_plain(Application.from_row(row))))
            response = await client.get(
                f"/lending/applications/{application_id}",
                params={"at_position": events[count - 1]["position"]},
            )
            assert exact(response) == expected


def recorded(event: dict[str, Any]) -> RecordedEvent:
    return RecordedEvent(
        position=event["position"],
        seq=event["seq"],
        stream_id=event["stream_id"],
        stream_version=event["stream_version"],
        event_id=event["event_id"],
        event_type=event["type"],
        schema_version=event["schema_version"],
        data=event["data"],
        metadata=event["metadata"],
        recorded_at=datetime.fromisoformat(event["recorded_at"]),
        prev_hash=bytes.fromhex(event["prev_hash"]),
        hash=bytes.fromhex(event["hash"]),
    )


async def test_time_travel_parameters_are_checked(service: Service) -> None:
    client = service.client
    run, submitted = new_run(), list[str]()
    await run_command(client, run, Apply(0, Decimal(900), Decimal(45000), 2), submitted)
    [application_id] = submitted
    path = f"/lending/applications/{application_id}"
    events = await events_of(client, application_id)
    first = events[0]
    created = datetime.fromisoformat(first["recorded_at"])

    present = await client.get(path)
    assert "etag" in present.headers  # without the parameters: the read model, unchanged

    for params, field in [
        ({"as_of": "2026-11-25T09:06:17"}, "as_of"),  # no time zone
        ({"as_of": "2026-11-25"}, "as_of"),
        ({"as_of": "1700000000"}, "as_of"),
        ({"as_of": "yesterday"}, "as_of"),
        ({"as_of": "0001-01-01T00:00:00+14:00"}, "as_of"),  # before year 1 in UTC
        ({"as_of": "9999-12-31T23:59:59-14:00"}, "as_of"),  # after year 9999 in UTC
        ({"as_of": "2026-02-30T00:00:00Z"}, "as_of"),
        ({"at_position": "0"}, "at_position"),
        ({"at_position": "-3"}, "at_position"),
        ({"at_position": str(2**63)}, "at_position"),
        ({"at_position": "1.5"}, "at_position"),
        ({"as_of": first["recorded_at"], "at_position": "1"}, "at_position"),
    ]:
        problem = assert_problem(await client.get(path, params=params), 422, "validation-error")
        assert [error["field"] for error in problem["errors"]] == [field], params
        assert problem["errors"][0]["location"] == "query"

    history_path = f"/lending/applicants/w_{run}_0/history"
    problem = assert_problem(
        await client.get(history_path, params={"as_of": "2026-11-25T09:06:17"}), 422
    )
    assert problem["errors"][0]["field"] == "as_of"

    before = (created - timedelta(microseconds=1)).isoformat()
    assert_problem(await client.get(path, params={"as_of": before}), 404, "not-found")
    assert_problem(
        await client.get(path, params={"at_position": first["position"] - 1}), 404, "not-found"
    )
    unknown = "/lending/applications/00000000-0000-4000-8000-000000000000"
    assert_problem(await client.get(unknown, params={"at_position": 10**9}), 404)
    assert_problem(await client.get("/lending/applications/nope", params={"at_position": 1}), 404)
    assert exact(await client.get(history_path, params={"as_of": before})) == []
    assert exact(await client.get(history_path, params={"as_of": first["recorded_at"]})) == [
        exact(await client.get(path, params={"at_position": events[-1]["position"]}))
    ]
    # Naming the instant with another offset is the same instant.
    shifted = created.astimezone(datetime.fromisoformat("2026-01-01T00:00:00+05:30").tzinfo)
    assert exact(await client.get(path, params={"as_of": shifted.isoformat()})) == exact(
        await client.get(path, params={"at_position": events[-1]["position"]})
    )
