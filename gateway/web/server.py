"""The web pages over HTTP/1.1 on the loop: an adapter around :class:`~gateway.web.pages.WebPages`.

It reads one request per connection (head and, for ``POST /login``, a body of at most 4 KiB),
answers it and closes. It is a side task: it never touches a call, and a failure to listen
is logged by the caller and the gateway goes on without pages.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

import structlog

from gateway.web.pages import MAX_BODY, Reply, WebPages

__all__ = ["WebServer"]

log = structlog.get_logger("gateway.web")

_MAX_HEAD: Final = 8192
_READ_TIMEOUT_S: Final = 5.0
#: how long a wrong password waits for its 401 (slows guessing; the loop is not blocked)
_FAILED_LOGIN_DELAY_S: Final = 0.5


class WebServer:
    """``await server.start()`` listens on ``host:port`` (0: any free port, see ``port``)."""

    def __init__(self, pages: WebPages, host: str, port: int) -> None:
        self.pages = pages
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` of the pages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("web_listening", url=self.url)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            reply, head_only = await asyncio.wait_for(self._read(reader), _READ_TIMEOUT_S)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            reply, head_only = Reply(400, "Bad Request", "text/plain", b"bad request\n"), False
        except ConnectionError:
            writer.close()
            return
        if reply.status == 401:
            await asyncio.sleep(_FAILED_LOGIN_DELAY_S)
        headers = "".join(f"{name}: {value}\r\n" for name, value in reply.headers.items())
        writer.write(
            f"HTTP/1.1 {reply.status} {reply.reason}\r\nContent-Type: {reply.content_type}\r\n"
            f"Content-Length: {len(reply.body)}\r\n{headers}Connection: close\r\n\r\n".encode()
            + (b"" if head_only else reply.body)
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    async def _read(self, reader: asyncio.StreamReader) -> tuple[Reply, bool]:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > _MAX_HEAD:
            raise ValueError("head too long")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3:
            raise ValueError("bad request line")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if not 0 <= length <= MAX_BODY:
            return Reply(413, "Content Too Large", "text/plain", b"too large\n"), False
        body = await reader.readexactly(length) if length else b""
        return self.pages.answer(parts[0], parts[1], body), parts[0] == "HEAD"
