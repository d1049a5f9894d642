"""API key on every route but the health checks, and a body-size limit, as one ASGI middleware."""

from __future__ import annotations

import hmac
import os
from http import HTTPStatus

from bentoml.exceptions import BentoMLException
from starlette.responses import JSONResponse

from serving.schemas import MAX_BODY_BYTES

# The desk page's static files hold no data (the page asks for the key and sends it on every call).
OPEN_PATHS = ("/healthz", "/livez", "/readyz", "/desk")
OPEN_PREFIXES = ("/desk/",)


def api_key() -> str | None:
    return os.environ.get("PLEDGEVAL_API_KEY") or None


def bind_host() -> str:
    """Without an API key the service must not be reachable from other machines."""
    return os.environ.get("PLEDGEVAL_HOST", "0.0.0.0") if api_key() else "127.0.0.1"


class ApiKeyMiddleware:
    def __init__(self, app):
        self.app = app
        self.key = api_key()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path = scope.get("path", "")
        if self.key and path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES):
            if not hmac.compare_digest(presented_key(headers).encode(), self.key.encode()):
                return await JSONResponse({"error": "missing or wrong API key (send X-API-Key)"},
                                          status_code=401)(scope, receive, send)
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            return await JSONResponse({"error": f"request body over {MAX_BODY_BYTES:,} bytes"},
                                      status_code=413)(scope, receive, send)
        if length is not None or scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        # A body without Content-Length (chunked): stop reading past the limit and answer 413. The app's own
        # error handling answers 500 to the exception first: that answer is held back, and the 413 sent.
        limit = _Limit(receive)

        async def guarded_send(message):
            if not limit.exceeded:
                await send(message)
        try:
            await self.app(scope, limit.receive, guarded_send)
        except BodyTooLarge:
            pass
        if limit.exceeded:
            await JSONResponse({"error": f"request body over {MAX_BODY_BYTES:,} bytes"},
                               status_code=413)(scope, receive, send)


class BodyTooLarge(BentoMLException):
    """A BentoML client error (413), so that its log line is one INFO line, not a server error's traceback."""
    error_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


def presented_key(headers: dict[str, str]) -> str:
    """The key of ``X-API-Key``, or of ``Authorization: Bearer KEY`` (the scheme in any case); a bare
    ``Authorization: KEY`` without a scheme is not a key. An empty ``X-API-Key`` is no key: it does not hide a
    Bearer key sent beside it."""
    if headers.get("x-api-key", "").strip():
        return headers["x-api-key"].strip()
    scheme, _, token = headers.get("authorization", "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class _Limit:
    def __init__(self, receive):
        self._receive, self.seen, self.exceeded = receive, 0, False

    async def receive(self):
        message = await self._receive()
        self.seen += len(message.get("body", b""))
        if self.seen > MAX_BODY_BYTES:
            self.exceeded = True
            raise BodyTooLarge(f"request body over {MAX_BODY_BYTES:,} bytes")
        return message
