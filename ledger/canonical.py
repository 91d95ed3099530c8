"""Canonical bytes and the hash chain.

Canonical bytes of a JSON value (defined once, here, and in docs/architecture.md so an
auditor can recompute them without this code): JSON text in UTF-8, object keys sorted by
code point, no insignificant white space, non-ASCII characters written as themselves (not
escaped), strings escaped as JSON requires (`"`, `\\`, and control characters), integers
as plain decimal digits from -2**63 to 2**64-1, and no floating-point numbers at all: every
decimal figure is a string. It is exactly `json.dumps(value, sort_keys=True, separators=(",", ":"),
ensure_ascii=False, allow_nan=False).encode("utf-8")` for such values; orjson produces the
same bytes faster, and a property test holds the two to each other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

GENESIS_HASH = bytes(32)
"""The previous hash of every stream's first event."""

_CANONICAL = orjson.OPT_SORT_KEYS


def _reject_unsupported(value: object) -> Any:
    raise TypeError(f"not canonically encodable: {type(value).__name__}")


def _check_no_floats(value: object) -> None:
    # Every event is hashed through here: exact-type checks first (isinstance against the
    # Mapping ABC costs several times more), the general checks only for other types.
    kind = type(value)
    items: Iterable[object]
    if kind is dict:
        items = value.values()  # type: ignore[attr-defined]
    elif kind is list or kind is tuple:
        items = value  # type: ignore[assignment]
    elif kind is str or kind is int or kind is bool or value is None:
        return
    elif isinstance(value, float):
        raise TypeError("floats are not canonically encodable; write decimals as strings")
    elif isinstance(value, Mapping):
        items = value.values()
    elif isinstance(value, list | tuple):
        items = value
    else:
        return
    for item in items:
        item_kind = type(item)
        if item_kind is str or item_kind is int or item is None or item_kind is bool:
            continue
        _check_no_floats(item)


def canonical_bytes(value: Any) -> bytes:
    """The canonical encoding of a JSON value made of dicts, lists, str, int, bool, None."""
    _check_no_floats(value)
    return orjson.dumps(value, option=_CANONICAL, default=_reject_unsupported)


_last_formatted: tuple[datetime | None, str] = (None, "")


def format_timestamp(moment: datetime) -> str:
    """A recorded time as it enters the hash: UTC, microseconds, `Z` suffix."""
    # The events of one command share their time: the last answer is kept (datetimes are
    # immutable, so the same object always formats the same; the pair is swapped whole).
    global _last_formatted
    last, text = _last_formatted
    if moment is last:
        return text
    text = _format_timestamp(moment)
    _last_formatted = (moment, text)
    return text


def _format_timestamp(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("recorded times must be timezone-aware")
    utc = moment.astimezone(UTC)
    if utc.year < 1000:  # strftime writes such years with fewer than four digits
        return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # The same text as that strftime, several times faster (every event is hashed here).
    return utc.isoformat(timespec="microseconds")[:-6] + "Z"


def envelope_for_hashing(
    *,
    stream_id: str,
    stream_version: int,
    event_id: str,
    event_type: str,
    schema_version: int,
    data: Mapping[str, Any],
    metadata: Mapping[str, Any],
    recorded_at: datetime,
    prev_hash: bytes,
) -> dict[str, Any]:
    """The fields an event's hash covers.

    The global position and the ledger `seq` are not covered: the database assigns them
    after the hash is computed. Their integrity is what the ledger log (contiguous `seq`)
    and the Merkle seals over it protect.
    """
    return {
        "stream_id": stream_id,
        "stream_version": stream_version,
        "event_id": event_id,
        "event_type": event_type,
        "schema_version": schema_version,
        "data": data,
        "metadata": metadata,
        "recorded_at": format_timestamp(recorded_at),
        "prev_hash": prev_hash.hex(),
    }


def event_hash(envelope: Mapping[str, Any]) -> bytes:
    """SHA-256 of the canonical envelope. The envelope embeds the previous event's hash,
    so each hash commits to the whole stream before it."""
    return hashlib.sha256(canonical_bytes(envelope)).digest()
