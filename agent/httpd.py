"""A tiny HTTP/1.1 server on trio, for ``/metrics``, ``/status`` and the monitor's web page.

Not a general web server: GET and POST with small bodies, one request per connection
(``Connection: close``), bounded header size, a read timeout, and a bounded number of
connections at once. A handler returns a :class:`Response`, or a :class:`Stream` whose async
iterator yields chunks (server-sent events); a stream ends when the client goes away.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import trio

__all__ = ["Request", "Response", "Stream", "Handler", "serve_http", "http_get"]

log = logging.getLogger("agent.httpd")

MAX_HEAD_BYTES = 8192
MAX_BODY_BYTES = 4096
READ_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 32
_REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 413: "Payload Too Large", 429: "Too Many Requests",
            500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Stream:
    """A streamed response (e.g. ``text/event-stream``): every chunk is sent as it comes."""

    chunks: AsyncIterator[bytes]
    content_type: str = "text/event-stream"


Handler = Callable[[Request], Awaitable[Response | Stream]]


class _BadRequest(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


async def _read_request(stream: trio.SocketStream) -> Request:
    buf = bytearray()
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_HEAD_BYTES:
            raise _BadRequest(413, "request head too large")
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise _BadRequest(400, "connection closed mid-request")
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest(400, "not an HTTP/1.x request line")
    method, target = parts[0], parts[1]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise _BadRequest(400, "malformed header line")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    if length > MAX_BODY_BYTES:
        raise _BadRequest(413, "request body too large")
    body = bytearray(rest)
    while len(body) < length:
        chunk = await stream.receive_some(length - len(body))
        if not chunk:
            raise _BadRequest(400, "connection closed mid-body")
        body += chunk
    url = urllib.parse.urlsplit(target)
    query = dict(urllib.parse.parse_qsl(url.query))
    return Request(method, url.path or "/", query, headers, bytes(body[:length]))


def _head(status: int, content_type: str, extra: dict[str, str], length: int | None) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", f"Content-Type: {content_type}",
             "Connection: close", "Cache-Control: no-store"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{k}: {v}" for k, v in extra.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _serve_one(stream: trio.SocketStream, handler: Handler, limiter: trio.CapacityLimiter) -> None:
    try:
        limiter.acquire_nowait()
    except trio.WouldBlock:
        await stream.aclose()
        return
    try:
        async with stream:
            try:
                with trio.fail_after(READ_TIMEOUT_S):
                    req = await _read_request(stream)
            except _BadRequest as exc:
                body = f"{exc}\n".encode()
                await stream.send_all(_head(exc.status, "text/plain; charset=utf-8", {}, len(body)) + body)
                return
            except (trio.TooSlowError, ValueError):
                return
            try:
                resp = await handler(req)
            except Exception:
                log.exception("HTTP handler failed for %s %s", req.method, req.path)
                resp = Response(500, b"internal error\n")
            if isinstance(resp, Stream):
                await stream.send_all(_head(200, resp.content_type, {}, None))
                async for chunk in resp.chunks:
                    await stream.send_all(chunk)
                return
            await stream.send_all(_head(resp.status, resp.content_type, resp.headers, len(resp.body))
                                  + (b"" if req.method == "HEAD" else resp.body))
    except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
        pass  # the client went away
    finally:
        limiter.release()


async def serve_http(handler: Handler, host: str, port: int, *,
                     task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until cancelled; ``task_status.started((host, port))`` once listening (the real
    port when ``port`` is 0). Raises OSError when the address cannot be bound."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    limiter = trio.CapacityLimiter(MAX_CONNECTIONS)

    async def conn(stream: trio.SocketStream) -> None:
        await _serve_one(stream, handler, limiter)

    sockname = listeners[0].socket.getsockname()
    async with trio.open_nursery() as n:
        n.start_soon(trio.serve_listeners, conn, listeners)
        task_status.started((sockname[0], sockname[1]))


async def http_get(host: str, port: int, path: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """GET ``path`` from a server like this one; (status, body). Raises OSError, trio.TooSlowError."""
    with trio.fail_after(timeout_s):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
                                  .encode("latin-1"))
            data = bytearray()
            length: int | None = None
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                data += chunk
                if length is None and b"\r\n\r\n" in data:
                    m = re.search(rb"\r\ncontent-length:\s*(\d+)", bytes(data).partition(b"\r\n\r\n")[0], re.I)
                    length = int(m.group(1)) if m else -1
                if length is not None and length >= 0 and \
                        len(data) - data.index(b"\r\n\r\n") - 4 >= length:
                    break  # a server that keeps the connection open after a sized body
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        raise OSError(f"not an HTTP response from {host}:{port}") from None
    return status, body
