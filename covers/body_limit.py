"""ASGI guard on the size of HTTP request bodies, in front of Django.

Django's ASGI handler reads the whole body (spooled to a temp file) before any view runs, with
no size limit for file uploads, so a view cannot stop a huge, chunked or understated upload.
This wrapper answers 413 (the API's JSON error) as soon as the declared Content-Length or the
bytes actually received pass COVER_MAX_REQUEST_BYTES (two files at COVER_MAX_UPLOAD_MB plus
1 MB of fields): it hands Django a disconnect, so Django drops its spooled body file (nothing
is left on disk) and no view runs.

How early that is depends on the server. Under uvicorn (``manage.py serve``, covers/server.py) the
application starts once the headers are parsed and body chunks arrive as they are read: a declared
length over the limit is answered before any body byte is read, a chunked body is cut off at the
limit. Under daphne the application only starts after Twisted has stored the whole body in a
temporary file, so the answer is the same but comes after the upload.
"""
from __future__ import annotations

import json

from django.conf import settings

MB = 1024 * 1024


def max_request_bytes() -> int:
    return int(2 * float(settings.COVER_MAX_UPLOAD_MB) * MB + MB)


def _body_413(limit: int) -> bytes:
    return json.dumps({"error": {"code": "upload_too_large", "field": None, "message": (
        f"the request body is over the limit of {limit / MB:.0f} MB (each file may be at most "
        f"{settings.COVER_MAX_UPLOAD_MB:g} MB)")}}).encode()


class BodySizeLimit:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = max_request_bytes()
        declared = None
        for name, value in scope.get("headers") or ():
            if name.lower() == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
        if declared is not None and declared > limit:
            return await self._reject(limit, send)
        state = {"seen": 0, "over": False, "started": False}

        async def limited_receive():
            if state["over"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body") or b"")
                if state["seen"] > limit:
                    state["over"] = True
                    return {"type": "http.disconnect"}
            return message

        async def watched_send(message):
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        await self.app(scope, limited_receive, watched_send)
        if state["over"] and not state["started"]:
            await self._reject(limit, send)

    @staticmethod
    async def _reject(limit: int, send) -> None:
        body = _body_413(limit)
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
