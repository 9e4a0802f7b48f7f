"""The HTTP server we run the ASGI application with: uvicorn (httptools parser, websockets).

Why not daphne: daphne (Twisted) calls the ASGI application only once the *whole* request body
has arrived. Twisted's ``http.Request.gotLength`` opens a ``tempfile.TemporaryFile`` for any body
of 100 kB or more, ``handleContentChunk`` writes every received byte to it, and daphne's
``WebRequest.process`` (which builds the scope and starts the application) runs from
``requestReceived``, i.e. after ``allContentReceived``. So no ASGI middleware under daphne can
answer a 300 MB upload before all 300 MB are on disk. uvicorn starts the application as soon as
the headers are parsed and hands the body over in ``http.request`` chunks as they arrive (it
stops reading the socket while 64 kB are waiting), so covers.body_limit answers 413 on the
declared length at once and cuts a chunked body off at the limit.

Header limit: httptools sets none of its own (uvicorn's h11 parser answers a bare 400 past
16 kB). :class:`HttpToolsProtocol` answers ``431 Request Header Fields Too Large`` (JSON, like
every API error) and closes the connection once the request line plus headers pass
``MAX_HEADER_BYTES``; WebSocket handshakes are parsed by the same class first.

``uvicorn_command()`` is the one command line (covers/management/commands/serve.py,
scripts/setup_and_run.sh through serve, the tests' servers).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _HttpToolsProtocol

ROOT = Path(__file__).resolve().parents[1]
MAX_HEADER_BYTES = 16 * 1024  # request line + header names and values (Node's default)


def _431_response() -> bytes:
    body = json.dumps({"error": {"code": "headers_too_large", "field": None, "message": (
        f"the request line and headers are over the limit of {MAX_HEADER_BYTES // 1024} kB")}}).encode()
    return (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)


class _HeadersTooLarge(Exception):
    pass


class HttpToolsProtocol(_HttpToolsProtocol):
    """uvicorn's httptools protocol with a limit on the size of the request head (431)."""

    _head_bytes = 0
    _head_too_large = False

    def on_message_begin(self) -> None:
        self._head_bytes = 0
        super().on_message_begin()

    def _count(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > MAX_HEADER_BYTES:
            self._head_too_large = True
            raise _HeadersTooLarge  # httptools turns it into HttpParserCallbackError

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def data_received(self, data: bytes) -> None:
        if self._head_too_large:
            return  # answered and closing: ignore the rest
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        if not self._head_too_large:
            return super().send_400_response(msg)
        self.transport.write(_431_response())
        self.transport.close()


def uvicorn_command(application: str, *, fd: int | None = None, host: str = "127.0.0.1", port: int = 8000,
                    proxy_headers: bool = False, access_log: bool = False) -> list[str]:
    """``python -m uvicorn ...`` serving ``application`` on ``fd`` (an inherited listening socket)
    or on ``host:port``."""
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT), "--http", "covers.server:HttpToolsProtocol",
           "--ws", "websockets-sansio", "--lifespan", "off", "--timeout-graceful-shutdown", "30"]
    cmd += ["--fd", str(fd)] if fd is not None else ["--host", host, "--port", str(port)]
    cmd += ["--proxy-headers"] if proxy_headers else ["--no-proxy-headers"]
    if not access_log:
        cmd.append("--no-access-log")
    return cmd + [application]
