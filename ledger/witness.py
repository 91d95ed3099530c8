"""Witnessing: copies of the seals outside the database, and the check against them.

A superuser who controls the database can delete the newest seals together with the events
after them, or rewrite a seal row; the seals in the database cannot show that. A witness
directory can, if it lives where that superuser cannot write (another machine, a mounted
append-only or WORM volume, a directory synced to object storage with retention):

- one file per seal, `seal-<tree_size, 20 digits>.json`, holding the seal exactly as the API
  serves it (`Seal.to_json`, canonical JSON bytes);
- written atomically and never overwritten: the complete file is written and fsynced under a
  temporary name, then hard-linked to its final name (`link` fails rather than replace), and
  the directory is fsynced. A file that already exists with the same bytes is fine (two
  processes witnessed the same seal); with other bytes it is a conflict, logged as an error
  and left alone: the witness keeps what it saw first;
- written only after the seal's transaction committed, so every witnessed seal existed in
  the database. A process that dies in between leaves a gap that the next seal it witnesses
  fills: each write first copies the database's seals since the last one it witnessed.

`check_witness` (`lending-ledger verify --witness DIR`) checks each witnessed seal: its
seal_hash and signature (by one of the trusted keys), and that the database still holds it
unchanged. A seal the database lost or rewrote is named by its tree size.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger.canonical import canonical_bytes
from ledger.db import Connection
from ledger.errors import LedgerIntegrityError
from ledger.integrity import Finding, VerifyReport
from ledger.seals import Seal, seal_of_size, seal_signature_is_valid, seals_between
from ledger.seals import statement_bytes as seal_statement_bytes
from ledger.signing import key_id

logger = logging.getLogger(__name__)

WITNESS = "witness"
"""The check name of witness findings in a verify report."""

_FILE = re.compile(r"seal-(\d{20})\.json")
_BACKFILL_BATCH = 1000


class WitnessConflict(LedgerIntegrityError):
    """The witness already holds a different seal of this tree size."""


def file_name(tree_size: int) -> str:
    return f"seal-{tree_size:020d}.json"


def seal_bytes(seal: Seal) -> bytes:
    return canonical_bytes(seal.to_json())


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_seal_file(directory: Path, seal: Seal) -> bool:
    """Witness one seal; True when written now, False when the same bytes were there.

    Raises WitnessConflict when a different seal of the same size was witnessed before, and
    OSError when the directory cannot be written."""
    data = seal_bytes(seal)
    final = directory / file_name(seal.tree_size)
    if final.exists():
        return _same_or_conflict(final, data, seal.tree_size)
    temporary = directory / f".{final.name}.{uuid.uuid4().hex}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, final)  # atomic, and never replaces an existing file
        except FileExistsError:
            return _same_or_conflict(final, data, seal.tree_size)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    _fsync_directory(directory)
    return True


def _same_or_conflict(path: Path, data: bytes, tree_size: int) -> bool:
    if path.read_bytes() != data:
        raise WitnessConflict(
            f"the witness {path} already holds a different seal of tree size {tree_size}: "
            "the database's seal differs from the one witnessed; run "
            "`lending-ledger verify --witness`"
        )
    return False


def witnessed_sizes(directory: Path) -> list[int]:
    """The tree sizes of the seal files in `directory`, ascending."""
    sizes = []
    for entry in os.scandir(directory):
        match = _FILE.fullmatch(entry.name)
        if match is not None:
            sizes.append(int(match.group(1)))
    return sorted(sizes)


class Witness:
    """Pushes seals to a witness directory, filling gaps from the database.

    One per process; `record` is called after each seal this process commits. It remembers
    the largest tree size it has witnessed (read from the directory once), and before
    writing a seal copies every database seal between that and it, so seals made by other
    processes or lost to a crash are witnessed too."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._last: int | None = None
        self._lock = asyncio.Lock()

    def prepare(self) -> None:
        """Create the directory if needed; raises OSError when it cannot be used."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise PermissionError(f"the witness directory {self.directory} is not writable")

    async def record(self, connection: Connection, seal: Seal) -> int:
        """Witness `seal` and any database seal before it not witnessed yet; how many files
        were written. Never raises for I/O trouble: a witness that cannot be written is
        logged (the seal stands in the database) and retried with the next seal."""
        async with self._lock:
            try:
                return await self._record(connection, seal)
            except WitnessConflict as conflict:
                logger.error("witness: %s", conflict.detail)
            except OSError as error:
                logger.error("witness: cannot write to %s: %s", self.directory, error)
            return 0

    async def _record(self, connection: Connection, seal: Seal) -> int:
        if self._last is None:
            sizes = await asyncio.to_thread(witnessed_sizes, self.directory)
            self._last = sizes[-1] if sizes else 0
        written = 0
        while self._last < seal.tree_size:
            seals = await seals_between(connection, self._last, seal.tree_size, _BACKFILL_BATCH)
            seals = seals or [seal]
            for each in seals:
                written += await asyncio.to_thread(write_seal_file, self.directory, each)
                self._last = each.tree_size
        if self._last == seal.tree_size and not written:
            # Already witnessed (by us or another process): the bytes must agree.
            written += await asyncio.to_thread(write_seal_file, self.directory, seal)
        return written


def witness_for(directory: Path | None) -> Witness | None:
    """The witness of a configured directory (created if absent), or None. Raises OSError
    when the directory cannot be created or written: a witness that silently writes
    nowhere would be worse than none."""
    if directory is None:
        return None
    witness = Witness(directory)
    witness.prepare()
    return witness


# --- The check: `lending-ledger verify --witness DIR` ---


def seal_from_json(document: Any) -> Seal:
    """A seal from its API JSON; ValueError when it is not one."""
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    try:
        return Seal(
            tree_size=int(document["tree_size"]),
            root_hash=bytes.fromhex(document["root_hash"]),
            previous_seal_hash=bytes.fromhex(document["previous_seal_hash"]),
            sealed_at=datetime.fromisoformat(document["sealed_at"]),
            key_id=str(document["key_id"]),
            signature=bytes.fromhex(document["signature"]),
            seal_hash=bytes.fromhex(document["seal_hash"]),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"not a seal: {error!r}") from None


def _differences(witnessed: Seal, stored: Seal) -> list[str]:
    mine, theirs = witnessed.to_json(), stored.to_json()
    return [name for name in mine if mine[name] != theirs[name]]


def _check_file(
    path: Path, tree_size: int, keys: dict[str, Ed25519PublicKey]
) -> tuple[Seal | None, str | None]:
    """The witnessed seal in `path`, or what is wrong with the file itself."""
    try:
        seal = seal_from_json(orjson.loads(path.read_bytes()))
    except (OSError, ValueError) as error:
        return None, f"the witness file {path.name} is unreadable: {error}"
    if seal.tree_size != tree_size:
        return None, f"the witness file {path.name} holds a seal of tree size {seal.tree_size}"
    if hashlib.sha256(seal_statement_bytes(seal)).digest() != seal.seal_hash:
        return None, "the witnessed seal's seal_hash is not the hash of its statement"
    key = keys.get(seal.key_id)
    if key is None:
        return None, f"the witnessed seal is signed by key {seal.key_id}, which is not trusted"
    if not seal_signature_is_valid(seal, key):
        return None, "the witnessed seal's signature does not verify"
    return seal, None


async def check_witness(
    connection: Connection, directory: Path, trusted_keys: Iterable[Ed25519PublicKey]
) -> tuple[int, list[Finding]]:
    """Every witnessed seal against the database: (how many were checked, findings).

    A witnessed seal must be a valid seal signed by a trusted key, and the database must
    hold the same seal (every field equal). Database seals newer than the newest witnessed
    one are not findings: the witness may lag. The directory is listed before the database
    is read, and seals are witnessed only after they commit, so no race is a finding."""
    keys = {key_id(key): key for key in trusted_keys}
    sizes = await asyncio.to_thread(witnessed_sizes, directory)
    findings: list[Finding] = []

    def finding(tree_size: int, detail: str) -> Finding:
        return Finding(WITNESS, None, None, f"seal of tree size {tree_size}: {detail}")

    for tree_size in sizes:
        path = directory / file_name(tree_size)
        witnessed, problem = await asyncio.to_thread(_check_file, path, tree_size, keys)
        if witnessed is None:
            findings.append(finding(tree_size, problem or "invalid"))
            continue
        stored = await seal_of_size(connection, tree_size)
        if stored is None:
            findings.append(
                finding(
                    tree_size,
                    "witnessed, but missing from the database: the seal was removed "
                    "(with the events after it, if the log is shorter too)",
                )
            )
        elif differences := _differences(witnessed, stored):
            fields = ", ".join(differences)
            findings.append(
                finding(tree_size, f"rewritten in the database: {fields} differ from the witness")
            )
    return len(sizes), findings


async def add_witness_findings(
    report: VerifyReport,
    open_connection: Callable[[], Awaitable[Connection]],
    directory: Path,
    trusted_keys: Iterable[Ed25519PublicKey],
) -> None:
    """`verify --witness DIR`: the witness check's count and findings, added to `report`."""
    connection = await open_connection()
    try:
        checked, findings = await check_witness(connection, directory, trusted_keys)
    finally:
        await connection.close()
    report.checked["witnessed_seals"] = checked
    report.findings.extend(findings)
