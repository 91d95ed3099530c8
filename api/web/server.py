"""Running uvicorn, with TCP_NODELAY on every connection, also with several workers.

uvicorn (0.54 and earlier) creates the listening socket its multi-worker supervisor hands
to the workers with `proto` 0. Accepted sockets inherit it, and asyncio sets TCP_NODELAY
only on sockets that report IPPROTO_TCP, so with `--workers N` Nagle's algorithm stays on.
uvicorn writes a response's head and body in two writes; the body then waits for the
client's delayed ACK, and every keep-alive request after the first costs about 40 ms on
Linux, however idle the machine (uvicorn issue #3149). A single worker is unaffected
(asyncio binds from getaddrinfo, which reports the protocol). The fix is the listener's
protocol, set here before the workers inherit it.
"""

from __future__ import annotations

import socket
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess


class NoDelayConfig(uvicorn.Config):
    """uvicorn's configuration, binding a listener whose accepted sockets get TCP_NODELAY."""

    def bind_socket(self) -> socket.socket:
        listener = super().bind_socket()
        if listener.family in (socket.AF_INET, socket.AF_INET6) and listener.proto == 0:
            return socket.socket(
                listener.family, listener.type, socket.IPPROTO_TCP, fileno=listener.detach()
            )
        return listener


def run(app: str, **options: Any) -> bool:
    """`uvicorn.run(app, **options)` for an import string, with NoDelayConfig. Returns
    whether the server started (with workers, whether the supervisor ran)."""
    config = NoDelayConfig(app, **options)
    if config.workers > 1:
        Multiprocess(config, sockets=[config.bind_socket()]).run()
        return True
    server = uvicorn.Server(config)
    server.run()
    return server.started
