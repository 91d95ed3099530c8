"""The pure side of `lending-ledger verify`: findings, the report, the hash of an envelope as
read back from the database, the per-stream chain state, and the trigger expectations.

The I/O (server-side cursors, one snapshot, the read-model fold) is in projections/verify.py.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from ledger.canonical import GENESIS_HASH

CHAIN = "chain"
LOG = "log"
TRIGGERS = "triggers"
READ_MODEL = "read_model"
SEALS = "seals"

CHECKS = (CHAIN, LOG, TRIGGERS, READ_MODEL, SEALS)


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing verify found wrong. `stream_id` and `position` are None when the finding is
    not about one stream or event (a disabled trigger, a hole in the log)."""

    check: str
    stream_id: str | None
    position: int | None
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "stream_id": self.stream_id,
            "position": self.position,
            "detail": self.detail,
        }


@dataclass
class VerifyReport:
    """`{"ok": bool, "checked": {name: count}, "findings": [Finding...]}` (docs/operations.md)."""

    checked: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": dict(self.checked),
            "findings": [finding.to_json() for finding in self.findings],
        }

    def to_text(self, limit: int = 200) -> str:
        events = self.checked.get("events", 0)
        rate = events / self.seconds if self.seconds > 0 else 0.0
        counts = ", ".join(
            f"{count:,} {name.replace('_', ' ')}" for name, count in self.checked.items()
        )
        lines = []
        if self.ok:
            lines.append("verify: OK, no findings")
        else:
            lines.append(f"verify: {len(self.findings)} finding(s)")
            for finding in self.findings[:limit]:
                where = finding.stream_id or "-"
                at = f" position {finding.position}" if finding.position is not None else ""
                lines.append(f"  {finding.check:<10} {where}{at}: {finding.detail}")
            if len(self.findings) > limit:
                lines.append(f"  ... and {len(self.findings) - limit} more (use --json for all)")
        lines.append(f"checked: {counts}")
        lines.append(f"in {self.seconds:.2f} s ({rate:,.0f} events/s)")
        return "\n".join(lines) + "\n"


# --- The hash of a stored envelope ---

_SORTED = orjson.OPT_SORT_KEYS


def contains_float(value: object) -> bool:
    """Whether a decoded JSON value holds a float anywhere (canonical JSON has none: every
    decimal is a string). A fast walk by exact type: this runs for every event."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            children: Iterable[object] = item.values()  # type: ignore[attr-defined]
        elif kind is list:
            children = item  # type: ignore[assignment]
        elif kind is float:
            return True
        else:
            continue
        for child in children:
            child_kind = type(child)
            if child_kind is float:
                return True
            if child_kind is dict or child_kind is list:
                stack.append(child)
    return False


def stored_envelope_hash(
    *,
    stream_id: str,
    stream_version: int,
    event_id: str,
    event_type: str,
    schema_version: int,
    data: Mapping[str, Any],
    metadata: Mapping[str, Any],
    recorded_at: str,
    prev_hash: bytes,
) -> bytes:
    """SHA-256 of the canonical envelope (ledger/canonical.py) of an event as stored.

    The same bytes as `ledger.chain.hash_of_event`, from values as the database returns them
    (`recorded_at` already formatted `YYYY-MM-DDTHH:MM:SS.ffffffZ`). The caller checks for
    floats first (`contains_float`): an envelope with one has no canonical bytes.
    """
    return hashlib.sha256(
        stored_envelope_bytes(
            stream_id=stream_id,
            stream_version=stream_version,
            event_id=event_id,
            event_type=event_type,
            schema_version=schema_version,
            data=data,
            metadata=metadata,
            recorded_at=recorded_at,
            prev_hash=prev_hash,
        )
    ).digest()


def stored_envelope_bytes(
    *,
    stream_id: str,
    stream_version: int,
    event_id: str,
    event_type: str,
    schema_version: int,
    data: Mapping[str, Any],
    metadata: Mapping[str, Any],
    recorded_at: str,
    prev_hash: bytes,
) -> bytes:
    """The canonical bytes of an event as stored (what `stored_envelope_hash` hashes, and
    what `events.hashed` must hold)."""
    envelope = {
        "stream_id": stream_id,
        "stream_version": stream_version,
        "event_id": event_id,
        "event_type": event_type,
        "schema_version": schema_version,
        "data": data,
        "metadata": metadata,
        "recorded_at": recorded_at,
        "prev_hash": prev_hash.hex(),
    }
    return orjson.dumps(envelope, option=_SORTED)


class StreamChains:
    """Follows events in (stream_id, stream_version) order, one stream after another, and
    reports the first break of each stream's chain (later events of a broken stream are not
    judged: everything after the first break is suspect anyway)."""

    __slots__ = ("broken", "expected_prev", "expected_version", "stream_id", "streams")

    def __init__(self) -> None:
        self.stream_id: str | None = None
        self.expected_prev = GENESIS_HASH
        self.expected_version = 1
        self.broken = False
        self.streams = 0

    def begin(self, stream_id: str) -> None:
        self.stream_id = stream_id
        self.expected_prev = GENESIS_HASH
        self.expected_version = 1
        self.broken = False
        self.streams += 1

    def check(
        self,
        position: int,
        stream_version: int,
        prev_hash: bytes,
        stored_hash: bytes,
        computed_hash: bytes | None,
        unreadable: str | None = None,
        stored_bytes_differ: bool = False,
    ) -> Finding | None:
        """One event of the current stream. `computed_hash` is None when the event could not
        be hashed, with `unreadable` saying why."""
        if self.broken:
            return None
        reason = None
        if stream_version != self.expected_version:
            reason = f"expected stream version {self.expected_version}, found {stream_version}"
        elif prev_hash != self.expected_prev:
            reason = "prev_hash does not match the previous event's hash"
        elif computed_hash is None:
            reason = unreadable or "the event cannot be hashed"
        elif computed_hash != stored_hash:
            reason = "hash does not match the event's contents"
        elif stored_bytes_differ:
            reason = "the stored canonical bytes (events.hashed) differ from the event's contents"
        if reason is not None:
            self.broken = True
            return Finding(CHAIN, self.stream_id, position, f"version {stream_version}: {reason}")
        self.expected_prev = stored_hash
        self.expected_version += 1
        return None


# --- The immutability triggers (schema.sql) ---

_ROW = 1
_BEFORE = 2
_DELETE = 8
_UPDATE = 16
_TRUNCATE = 32

IMMUTABILITY_FUNCTION = "ledger_reject_mutation"

EXPECTED_TRIGGERS: dict[str, tuple[str, int]] = {
    "events_reject_update_delete": ("events", _ROW | _BEFORE | _DELETE | _UPDATE),
    "events_reject_truncate": ("events", _BEFORE | _TRUNCATE),
    "ledger_log_reject_update_delete": ("ledger_log", _ROW | _BEFORE | _DELETE | _UPDATE),
    "ledger_log_reject_truncate": ("ledger_log", _BEFORE | _TRUNCATE),
}
"""trigger name -> (table, pg_trigger.tgtype)."""

_ENABLED = {"O", "A"}  # fires in normal sessions (origin) or always
_TGENABLED_MEANING = {"D": "disabled", "R": "enabled for replica sessions only"}


def function_body(schema_sql: str, name: str) -> str | None:
    """The body between the $$ quotes of `CREATE ... FUNCTION name()` in schema.sql."""
    match = re.search(
        rf"FUNCTION\s+{re.escape(name)}\(\)[^$]*?\$\$(.*?)\$\$", schema_sql, flags=re.DOTALL
    )
    return match.group(1) if match else None


@dataclass(frozen=True, slots=True)
class TriggerRow:
    table: str
    name: str
    enabled: str  # pg_trigger.tgenabled
    type_bits: int  # pg_trigger.tgtype
    function: str
    function_body: str


def check_triggers(rows: Iterable[TriggerRow], expected_body: str | None) -> list[Finding]:
    """Every immutability trigger exists, is enabled, fires on the right events and calls
    the rejecting function, whose body is still the one in schema.sql."""
    findings = []
    found = {row.name: row for row in rows}
    for name, (table, type_bits) in EXPECTED_TRIGGERS.items():
        row = found.get(name)
        problem = None
        if row is None or row.table != table:
            problem = "is missing"
        elif row.enabled not in _ENABLED:
            problem = f"is {_TGENABLED_MEANING.get(row.enabled, 'not enabled')}"
        elif row.type_bits != type_bits:
            problem = "no longer fires on the statements it must refuse"
        elif row.function != IMMUTABILITY_FUNCTION:
            problem = f"calls {row.function}() instead of {IMMUTABILITY_FUNCTION}()"
        elif expected_body is not None and row.function_body != expected_body:
            problem = f"calls {IMMUTABILITY_FUNCTION}(), whose body differs from schema.sql"
        if problem is not None:
            findings.append(Finding(TRIGGERS, None, None, f"trigger {name} on {table} {problem}"))
    return findings
