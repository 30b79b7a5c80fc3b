"""Connections bounded where uvicorn leaves them open: what `make serve` runs its HTTP on (translate/commands/serve.py).

    uvicorn.run(app, http=protocol_with(ConnectionBounds(...)), backlog=backlog(n), ...)

uvicorn's httptools protocol, subclassed (BoundedHttp): a connection beyond max_connections is closed at once
(503), one whose request headers are not complete within header_timeout_s or grow past max_header_kb is
answered 408 / 431 and closed, and one whose client reads nothing of its answer for write_timeout_s is cut
off; the app itself bounds bodies and answers (app.py).  Its plain-text errors are the server's JSON.
"""

import resource
from dataclasses import dataclass
from http import HTTPStatus

from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from translate.serving.app import error, error_body

RESERVED_FDS = 128  # file descriptors kept for the server's own files (checkpoints, logs, libraries, pipes)
MOST_CONNECTIONS = 1024  # the derived max_connections' ceiling: each may hold a 64 KiB read buffer
MIN_BACKLOG = 128


@dataclass(frozen=True)
class ConnectionBounds:
    max_connections: int
    header_timeout_s: float
    max_header_bytes: int
    write_timeout_s: float


def default_max_connections() -> int:
    """Half of what RLIMIT_NOFILE leaves after RESERVED_FDS, at most MOST_CONNECTIONS: the listening backlog is at
    most as large (backlog()), so open connections and a burst of accepted ones (closed at once beyond the cap)
    never take every descriptor."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = 1 << 20 if soft == resource.RLIM_INFINITY else soft
    return max(1, min(MOST_CONNECTIONS, (soft - RESERVED_FDS) // 2))


def backlog(connections: int) -> int:
    """Connections the kernel queues for accepting: as many as may be open, at least MIN_BACKLOG (a smaller queue
    drops a burst's connection attempts, which then wait a second to retry), at most what the descriptors allow."""
    return min(max(connections, MIN_BACKLOG), default_max_connections())


class BoundedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds it lacks (module docstring), and its plain-text errors (400
    for a request that is not HTTP, 503 past limit_concurrency) in the server's JSON.  On shutdown a request
    whose body is still arriving is answered 503 at once: it was never taken, and waiting for it would hold the
    shutdown."""

    bounds: ConnectionBounds  # set by protocol_with()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.header_timer = self.write_timer = None
        if len(self.connections) > self.bounds.max_connections:
            self.refuse(503, f"connections: more than {self.bounds.max_connections} open (max_connections); retry")
            return
        self.await_headers()

    def await_headers(self) -> None:
        self.header_bytes = 0
        self.header_timer = self.loop.call_later(self.bounds.header_timeout_s, self.headers_too_slow)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.header_timer is None:  # the next request of a kept-alive connection
            self.await_headers()

    def on_headers_complete(self) -> None:
        self.header_timer = cancelled(self.header_timer)
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.header_timer is not None and not self.transport.is_closing():  # the headers are still arriving
            self.header_bytes += len(data)
            if self.header_bytes > self.bounds.max_header_bytes:
                kb = self.bounds.max_header_bytes // 1024
                self.refuse(431, f"request headers: more than {kb} KiB (max_header_kb); send fewer or shorter ones")

    def headers_too_slow(self) -> None:
        seconds = self.bounds.header_timeout_s
        self.refuse(408, f"request headers: not complete within {seconds:g} s (header_timeout_s); send them at once")

    def pause_writing(self) -> None:  # the client is not reading its answer
        super().pause_writing()
        cancelled(self.write_timer)
        self.write_timer = self.loop.call_later(self.bounds.write_timeout_s, self.transport.abort)

    def resume_writing(self) -> None:
        super().resume_writing()
        self.write_timer = cancelled(self.write_timer)

    def connection_lost(self, exc) -> None:
        self.header_timer, self.write_timer = cancelled(self.header_timer), cancelled(self.write_timer)
        super().connection_lost(exc)

    def shutdown(self) -> None:
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not cycle.response_started:
            self.refuse(503, "server: stopping; send the request again later")
            return
        super().shutdown()

    def send_400_response(self, msg: str) -> None:
        self.refuse(400, f"request: not HTTP/1.1 ({msg}); send an HTTP request")

    def _start_asgi_task(self, cycle, app) -> None:
        if app is service_unavailable:  # uvicorn's own answer past limit_concurrency, in plain text
            limit = self.limit_concurrency
            busy = f"busy: {limit} connections or requests at once (limit_concurrency); retry shortly"
            app = error(503, busy, **{"Retry-After": "1", "Connection": "close"})
        super()._start_asgi_task(cycle, app)

    def refuse(self, status: int, message: str) -> None:
        """Answer `status` with the JSON error and close the connection, whatever its request's state."""
        self.header_timer = cancelled(self.header_timer)
        if self.transport.is_closing():
            return
        body = error_body(message)
        head = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
        head += f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        self.transport.write(head.encode() + body)
        self.transport.close()


def cancelled(timer) -> None:
    if timer is not None:
        timer.cancel()
    return None


def protocol_with(bounds: ConnectionBounds) -> type[BoundedHttp]:
    """BoundedHttp with these bounds, for uvicorn.Config(http=…), which builds one per connection."""
    return type("BoundedHttp", (BoundedHttp,), {"bounds": bounds})
