"""`lending-ledger rescore`: recompute every recorded score and compare it with the record.

`--all` reads the score and decision events through a server-side cursor, stream by stream
(one application's events in memory at a time), inside one read-only REPEATABLE READ
transaction, so the summary describes one consistent snapshot. `--application ID` checks one
application. Each score is reconstructed exactly as `GET /audit/applications/{id}/scores`
does it (`ledger.reconstruction`); every non-match is reported in full, then one summary.

Exit codes: 0 every score matched, 1 any score did not (mismatch, unknown model, fingerprint
mismatch, refused inputs, unreadable event), 2 a usage error (a malformed or unknown
application id) or a database that cannot be read.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Annotated, TextIO
from uuid import UUID

import asyncpg
import typer

from api.cli.common import JsonOption, ProgressOption, VerboseOption, exits, settings_from_env
from api.cli.progress import Tracker, tracking
from api.jsonio import dumps, to_plain
from api.service.audit_models import RescoreSummary, ScoreReconstruction
from api.service.embedded import database_url
from api.service.settings import Settings
from ledger import sql
from ledger.application import stream_id_for
from ledger.db import connect
from ledger.events import ApplicationDecided, ApplicationScored, RecordedEvent
from ledger.reconstruction import (
    FINGERPRINT_MISMATCH,
    MATCH,
    MISMATCH,
    MODEL_UNKNOWN,
    RECOMPUTE_FAILED,
    UNREADABLE,
    ScoreCheck,
    reconstruct_stream,
)
from ledger.scoring import MODELS, ScoringModel
from ledger.store import read_stream, recorded_event_from_row

EXIT_ALL_MATCHED = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2

SCORE_EVENT_TYPES = [ApplicationScored.event_type, ApplicationDecided.event_type]


class RescoreReport:
    """Counts every check and writes each non-match as it comes, then the summary."""

    def __init__(self, out: TextIO, as_json: bool) -> None:
        self.out = out
        self.as_json = as_json
        self.counts: Counter[str] = Counter()
        self._findings = 0
        if as_json:
            out.write('{"findings": [')

    def add(self, checks: Iterable[ScoreCheck]) -> None:
        for check in checks:
            result = check.reconstruction
            self.counts[result.status] += 1
            if result.match:
                continue
            if self.as_json:
                separator = "," if self._findings else ""
                finding = dumps(to_plain(ScoreReconstruction.from_check(check))).decode()
                self.out.write(f"{separator}\n{finding}")
            else:
                event = check.event
                self.out.write(
                    f"{result.status}: {event.stream_id} version {event.stream_version} "
                    f"(position {event.position}, event {event.event_id}), "
                    f"model {result.model_key or 'unknown'}: {result.detail}\n"
                )
            self._findings += 1

    @property
    def summary(self) -> RescoreSummary:
        counts = self.counts
        return RescoreSummary(
            checked=sum(counts.values()),
            matched=counts[MATCH],
            mismatched=counts[MISMATCH],
            model_unknown=counts[MODEL_UNKNOWN],
            fingerprint_mismatch=counts[FINGERPRINT_MISMATCH],
            recompute_failed=counts[RECOMPUTE_FAILED],
            unreadable=counts[UNREADABLE],
        )

    def finish(self) -> int:
        summary = self.summary
        if self.as_json:
            body = dumps(to_plain(summary)).decode()
            self.out.write(f'{chr(10) if self._findings else ""}], "summary": {body}}}\n')
        else:
            self.out.write(
                f"rescore: checked {summary.checked}, matched {summary.matched}, "
                f"mismatched {summary.mismatched}, unknown model {summary.model_unknown}, "
                f"fingerprint mismatch {summary.fingerprint_mismatch}, "
                f"recompute failed {summary.recompute_failed}, "
                f"unreadable {summary.unreadable}\n"
            )
        self.out.flush()
        return EXIT_ALL_MATCHED if summary.matched == summary.checked else EXIT_FINDINGS


async def rescore(
    url: str,
    *,
    application_id: UUID | None = None,
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
    models: Mapping[str, ScoringModel] = MODELS,
    prefetch: int = 500,
    tracker: Tracker | None = None,
) -> int:
    """Check one application's scores, or every score in the ledger; return the exit code.

    `tracker` (--all only): told the number of score and decision events first, then each
    stream's as it is checked. `out` and `err`: default sys.stdout and sys.stderr, as they are
    when it is called."""
    out, err = out or sys.stdout, err or sys.stderr
    connection = await connect(url)
    try:
        if application_id is not None:
            events = await read_stream(connection, stream_id_for(application_id))
            if not events:
                err.write(f"lending-ledger rescore: no application {application_id}\n")
                return EXIT_USAGE
            report = RescoreReport(out, as_json)
            report.add(reconstruct_stream(events, models))
            return report.finish()

        report = RescoreReport(out, as_json)
        async with connection.transaction(isolation="repeatable_read", readonly=True):
            if tracker is not None:
                total = await connection.fetchval(sql.COUNT_SCORE_EVENTS, SCORE_EVENT_TYPES)
                tracker.update(0, total)
            stream: list[RecordedEvent] = []
            cursor = connection.cursor(
                sql.SELECT_SCORE_EVENTS, SCORE_EVENT_TYPES, prefetch=prefetch
            )
            async for row in cursor:
                event = recorded_event_from_row(row)
                if stream and event.stream_id != stream[0].stream_id:
                    report.add(reconstruct_stream(stream, models))
                    if tracker is not None:
                        tracker.advance(len(stream))
                    stream = []
                stream.append(event)
            report.add(reconstruct_stream(stream, models))
            if tracker is not None:
                tracker.advance(len(stream))
        return report.finish()
    finally:
        await connection.close()


@exits
def rescore_command(
    all_applications: Annotated[
        bool, typer.Option("--all", help="Every application (one consistent snapshot).")
    ] = False,
    application: Annotated[
        str | None, typer.Option(metavar="ID", help="One application (its uuid).")
    ] = None,
    as_json: JsonOption = False,
    progress: ProgressOption = None,
    verbose: VerboseOption = False,
) -> int:
    """Recompute recorded scores with the model version each names and compare.

    Reports every score that does not match, then a summary. Exactly one of --all and
    --application. With --json: {"findings": [...], "summary": {...}}. Exit 0 every score
    matched, 1 any did not, 2 usage error.
    """
    if all_applications == (application is not None):
        sys.stderr.write("lending-ledger rescore: give exactly one of --all and --application\n")
        return EXIT_USAGE
    settings = settings_from_env(verbose)
    return run_rescore(settings, application, as_json=as_json, progress=progress)


def run_rescore(
    settings: Settings,
    application: str | None,
    *,
    as_json: bool = False,
    progress: bool | None = None,
) -> int:
    application_id = None
    if application is not None:
        try:
            application_id = UUID(application)
        except ValueError:
            sys.stderr.write(f"lending-ledger rescore: not an application id: {application}\n")
            return EXIT_USAGE
    with database_url(settings.database_url, settings.data_dir) as url:
        try:
            if application_id is not None:
                return asyncio.run(rescore(url, application_id=application_id, as_json=as_json))
            with tracking("rescore", option=progress) as tracker:
                return asyncio.run(
                    rescore(url, as_json=as_json, tracker=None if progress is False else tracker)
                )
        except (OSError, asyncpg.PostgresError) as error:
            sys.stderr.write(f"lending-ledger rescore: could not read the database: {error}\n")
            return EXIT_USAGE
