"""The HTTP door sends each audio chunk at once: its connections have TCP_NODELAY.

Without it, Nagle's algorithm held the first chunk after the response headers until the client
acknowledged them, and clients delay that ACK by up to 40 ms: measured on the demo model, the
single-stream TTFB over HTTP fell from 86 to 49 ms (gRPC 40 ms) with the option set.
"""

import socket

import httpx


def test_connections_the_http_server_accepts_send_without_delay(start_http_server):
    server = start_http_server()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/healthz").status_code == 200  # the connection stays open (keep-alive)

        async def accepted_sockets():
            # uvicorn's record of its open connections: each protocol's transport holds the socket
            return [conn.transport.get_extra_info("socket") for conn in
                    server.server._http._server.server_state.connections]  # noqa: SLF001

        sockets = server.run(accepted_sockets())
        assert sockets, "the server holds no connection from the client"
        for sock in sockets:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
