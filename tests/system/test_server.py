"""The listener `lending-ledger serve` binds: every accepted connection has TCP_NODELAY.

With several workers uvicorn binds the listener itself and the workers inherit it; if its
accepted sockets lack TCP_NODELAY, each keep-alive response's body waits for the client's
delayed ACK (about 40 ms on Linux). Checked on a real loopback connection accepted the way
a uvicorn worker accepts it (asyncio's create_server on the inherited socket).
"""

from __future__ import annotations

import asyncio
import pickle
import socket
from multiprocessing.reduction import ForkingPickler

from api.web.server import NoDelayConfig
from tests.support.faults import free_port


async def accepted_socket_options(listener: socket.socket) -> tuple[int, int]:
    """(proto, TCP_NODELAY) of a connection accepted through asyncio on `listener`."""
    seen: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()

    class Report(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted = transport.get_extra_info("socket")
            seen.set_result(
                (accepted.proto, accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            )
            transport.close()

    server = await asyncio.get_running_loop().create_server(Report, sock=listener)
    try:
        host, port = listener.getsockname()[:2]
        _, writer = await asyncio.open_connection(host, port)
        try:
            return await asyncio.wait_for(seen, 10)
        finally:
            writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_connections_accepted_on_the_bound_listener_have_tcp_nodelay() -> None:
    config = NoDelayConfig("api.web.app:create_app", host="127.0.0.1", port=free_port(), workers=2)
    listener = config.bind_socket()
    assert listener.proto == socket.IPPROTO_TCP
    assert await accepted_socket_options(listener) == (socket.IPPROTO_TCP, 1)


async def test_the_listener_keeps_its_protocol_when_handed_to_a_worker() -> None:
    """Workers are spawned processes: the listener reaches them pickled, as here."""
    config = NoDelayConfig("api.web.app:create_app", host="127.0.0.1", port=free_port(), workers=2)
    listener = config.bind_socket()
    inherited = pickle.loads(ForkingPickler.dumps(listener))
    listener.close()
    assert inherited.proto == socket.IPPROTO_TCP
    assert await accepted_socket_options(inherited) == (socket.IPPROTO_TCP, 1)
