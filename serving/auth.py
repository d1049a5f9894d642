"""API key on every route but the health checks, and a body-size limit, as one ASGI middleware."""

from __future__ import annotations

import hmac
import os

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
            given = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), self.key.encode()):
                return await JSONResponse({"error": "missing or wrong API key (send X-API-Key)"},
                                          status_code=401)(scope, receive, send)
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            return await JSONResponse({"error": f"request body over {MAX_BODY_BYTES:,} bytes"},
                                      status_code=413)(scope, receive, send)
        if length is None and scope.get("method") in ("POST", "PUT", "PATCH"):
            receive = _limited(receive)
        return await self.app(scope, receive, send)


def _limited(receive):
    """For bodies without Content-Length: stop reading past the limit."""
    seen = 0

    async def wrapped():
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > MAX_BODY_BYTES:
            raise ValueError(f"request body over {MAX_BODY_BYTES:,} bytes")
        return message
    return wrapped
