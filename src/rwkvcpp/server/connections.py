"""Connection limits the HTTP server enforces below the app: how long a client may take to send
a request's headers, how many connections may be open, and (in :mod:`.middleware`) how long it
may take over the body.

uvicorn closes idle keep-alive connections, but a connection that never finishes its headers
(a slowloris client, or one that connects and sends nothing) would hold a socket and a slot
forever: :func:`protocol` adds a deadline for the headers of each request, as nginx's
``client_header_timeout`` does.
"""

from __future__ import annotations

from typing import Any

__all__ = ["protocol", "uvicorn_settings", "run_server"]


def protocol(header_timeout: float) -> type:
    """uvicorn's h11 protocol with a deadline: a connection whose next request has not been read
    up to the end of its headers ``header_timeout`` seconds after the connection opened, or
    after that request's first byte, is closed."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineProtocol(H11Protocol):
        _deadline: Any = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self.cycle is None or self.cycle.response_complete:
                self._arm()  # the first bytes of a new request: its headers have this long
            before = self.cycle
            super().data_received(data)
            if self.cycle is not before:  # the headers were read: the app has the request
                self._disarm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(header_timeout, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                try:
                    self.conn.send(h11.ConnectionClosed())
                except h11.LocalProtocolError:
                    pass
                self.transport.close()

    return HeaderDeadlineProtocol


def uvicorn_settings(config) -> dict:
    """The keyword arguments of ``uvicorn.run`` / ``uvicorn.Config`` for a ServerConfig's limits."""
    return {"http": protocol(config.header_timeout), "limit_concurrency": config.max_connections,
            "timeout_keep_alive": 5, "timeout_graceful_shutdown": 3}


def run_server(app, config, log_level: str = "info", sockets=None) -> bool:
    """Serves ``app`` with uvicorn under ``config``'s limits until SIGINT or SIGTERM; False if it
    could not start (the address is taken, say: uvicorn has said why).

    On the signal the running generations are stopped before uvicorn waits for the open
    requests: each ends at its next token (a stream with an error event saying the server is
    shutting down, then ``[DONE]``), so the process exits promptly and every client sees its
    answer end cleanly rather than a connection cut after the graceful-shutdown timeout."""
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            scheduler = getattr(app.state, "scheduler", None)
            if scheduler is not None:
                scheduler.shutdown()
            await super().shutdown(sockets)

    if config.access_log == "json":
        from .access_log import log_to_stderr

        log_to_stderr()
    server = Server(uvicorn.Config(app, host=config.host, port=config.port, log_level=log_level,
                                   access_log=config.access_log == "text", **uvicorn_settings(config)))
    try:
        server.run(sockets=sockets)
    except SystemExit as e:  # uvicorn exits when it cannot bind
        if e.code:
            return False
        raise
    return server.started
