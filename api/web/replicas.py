"""Reading from a streaming replica, and reading your own writes there.

With LEDGER_READ_DATABASE_URL set, reads that may lag (an applicant's history, an
application's events, the `/events` feed, decision records, score reconstruction) use the
replica's pool (`ReadPoolDep` in api/web/dependencies.py); writes, the sequencer, the sealer,
keys and the SSE stream stay on the primary.

Read-your-writes: every successful write response carries `X-Ledger-LSN`, the primary's WAL
position right after the write committed. A read sent with `X-Min-LSN: <that value>` is
served by the replica once it has replayed that far, waiting at most
LEDGER_READ_MIN_LSN_WAIT_MS, else by the primary. So a client that passes the LSN on never
reads older than its own write, and one that does not may read a little stale (the replica's
lag, exposed as `ledger_replica_lag_seconds`).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.service.errors import DATABASE_UNAVAILABLE, ServiceUnavailable
from api.service.runtime import LedgerService
from ledger.log_status import current_wal_lsn

LSN_HEADER = b"x-ledger-lsn"
MIN_LSN_HEADER = "X-Min-LSN"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class ReadYourWritesMiddleware:
    """Adds `X-Ledger-LSN` to successful write responses (only when a replica is set up:
    it costs a query on the primary per write)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in WRITE_METHODS:
            await self.app(scope, receive, send)
            return

        async def send_with_lsn(message: Message) -> None:
            # The handler has committed before its response starts, so the WAL position
            # read now is at or past its commit record.
            if message["type"] == "http.response.start" and message["status"] < 400:
                service: LedgerService = scope["app"].state.service
                try:
                    async with service.pool.acquire(timeout=2) as connection:
                        lsn = await current_wal_lsn(connection)
                except (ServiceUnavailable, TimeoutError, *DATABASE_UNAVAILABLE):
                    lsn = None
                if lsn is not None:
                    message["headers"] = [*message.get("headers", []), (LSN_HEADER, lsn.encode())]
            await send(message)

        await self.app(scope, receive, send_with_lsn)
