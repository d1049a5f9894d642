"""One error shape on every route, and client errors logged as what they are.

Every 4xx/5xx answer is ``{"error": "<field>: <what is wrong>"}`` (the framework's plain-text answers, such
as an unknown path's 404, become ``{"error": "<method> <path>: <its text>"}``); a request that fails validation also
carries ``"detail"``, pydantic's list of problems (``loc``, ``msg``, ``type``). BentoML answers an API
method's exception as a one-element list and a validation error with a count instead of the fields, and
logs both at ERROR with a traceback, as if the server had failed. The middleware reshapes the answers;
the log filter turns client errors into one INFO line.
"""

from __future__ import annotations

import json
import logging

from bentoml.exceptions import BentoMLException

# where BentoML's log_exception writes (bentoml._internal.server.http_app's module logger)
BENTOML_ERROR_LOGGER = "bentoml._internal.server.http_app"


def field_path(loc) -> str:
    """pydantic's ("items", 0, "quantity") as items[0].quantity."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def reshaped(body: bytes) -> bytes | None:
    """The error body in the one shape, or None when it has it already (or is not ours to touch)."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict) and "error" in data[0]:
        return json.dumps(data[0]).encode()
    if isinstance(data, dict) and isinstance(data.get("detail"), list) and data["detail"] \
            and all(isinstance(d, dict) and "loc" in d for d in data["detail"]):
        # a problem of the whole body (not JSON at all) has no field: it is the body's
        problems = "; ".join(f"{field_path(d['loc']) or 'body'}: {d.get('msg', 'invalid')}" for d in data["detail"])
        return json.dumps({"error": problems, "detail": data["detail"]}).encode()
    return None


class ErrorShapeMiddleware:
    """Holds back a JSON error answer (small by nature), reshapes it, and sends it with its new length."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        held: dict = {}

        async def shaped_send(message):
            if message["type"] == "http.response.start":
                headers = dict((k.lower(), v) for k, v in message.get("headers", []))
                kind = headers.get(b"content-type", b"")
                if message["status"] >= 400 and kind.startswith((b"application/json", b"text/plain")):
                    held["start"], held["body"], held["plain"] = message, b"", kind.startswith(b"text/plain")
                    return
            elif message["type"] == "http.response.body" and "start" in held:
                held["body"] += message.get("body", b"")
                if message.get("more_body"):
                    return
                start = held.pop("start")
                headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                if held["plain"]:  # the framework's own answers (an unknown path, a method not allowed)
                    text = held["body"].decode("utf-8", "replace").strip()
                    body = json.dumps({"error": f"{scope.get('method')} {scope.get('path')}: {text}"}).encode()
                    headers = [(k, v) for k, v in headers if k.lower() != b"content-type"] \
                        + [(b"content-type", b"application/json")]
                else:
                    body = reshaped(held["body"]) or held["body"]
                start["headers"] = headers + [(b"content-length", str(len(body)).encode())]
                await send(start)
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, shaped_send)


class ClientErrorsAtInfo(logging.Filter):
    """A 4xx is the client's mistake: one INFO line with the message, no traceback. 5xx stay errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        status = None
        if isinstance(exc, BentoMLException):
            status = int(exc.error_code)
        elif type(exc).__name__ == "ValidationError":  # pydantic's: the request failed validation
            status = 400
        if status is not None and status < 500:
            record.msg = f"{record.msg}: client error {status}: %s"
            record.args = (*(record.args or ()), str(exc).splitlines()[0])
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        return True


def quiet_client_errors() -> None:
    logger = logging.getLogger(BENTOML_ERROR_LOGGER)
    if not any(isinstance(f, ClientErrorsAtInfo) for f in logger.filters):
        logger.addFilter(ClientErrorsAtInfo())
