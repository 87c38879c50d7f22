"""What stands between a hostile request and the model, in front of the predict route.

- BodyLimit (pure ASGI): a Content-Length over the limit is answered 413 before a byte of the
  body is read; a streamed (chunked) body is counted as it arrives and cut off at the limit. Then
  the connection closes the way nginx closes one (lingering close): the 413 goes out whole, and
  what the client still sends is read and dropped (at most LINGER_BYTES, LINGER_SECONDS in all,
  LINGER_IDLE_SECONDS without a byte) before the close. Closing with unread bytes makes the kernel
  send a reset, and a client that sends its whole body before reading (urllib) loses the 413.
- StrictJSONRoute: the body is parsed as strict JSON (UTF-8, no NaN or Infinity, no number of
  thousands of digits, a nesting the parser survives); each failure is a 422, never a 500.
- problems(): validation errors as field and rule, never the value that broke them (a prompt,
  a base64 file): at most MAX_PROBLEMS, field names cut at MAX_FIELD_CHARS.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_PROBLEMS = 5
MAX_FIELD_CHARS = 64  # an unknown field's name is the caller's text too: never echo much of it
MAX_MESSAGE_CHARS = 200
# nginx's lingering close (http://nginx.org/en/docs/http/ngx_http_core_module.html#lingering_close):
# lingering_time 30s, lingering_timeout 5s; and a byte bound, so a client cannot hold the
# connection by sending forever.
LINGER_BYTES = 64 << 20
LINGER_SECONDS = 30.0
LINGER_IDLE_SECONDS = 5.0


class BodyTooLarge(HTTPException):
    """Raised from inside the body's stream: FastAPI passes HTTPExceptions from its body reading
    through (any other exception there becomes a bare 400), and Starlette answers it."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large(limit), headers={"Connection": "close"})


def too_large(limit: int) -> str:
    return (f"the request body is larger than {limit} bytes, this model's limit "
            "(serving.max_body_bytes in the manifest, or BUILDER_MAX_BODY_BYTES)")


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            # Answered unread (no `100 Continue` goes out: a client that waits for one sends nothing).
            body = json.dumps({"detail": too_large(self.limit)}).encode()
            await send({"type": "http.response.start", "status": 413, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body, "more_body": True})
            await linger(receive)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        seen = 0
        over = False

        async def counted() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit and message.get("more_body", False):
                    over = True  # the rest is still coming: the answer's close must linger
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def answering(message: Message) -> None:
            # The 413 that BodyTooLarge became: its last part waits until the rest of the body is read.
            if over and message["type"] == "http.response.body" and not message.get("more_body", False):
                await send({**message, "more_body": True})
                await linger(receive)
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app(scope, counted, answering)


async def linger(receive: Receive) -> None:
    """Read and drop the rest of the request body, within the bounds above; the server closes the
    connection once the response ends."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LINGER_SECONDS
    dropped = 0
    while dropped < LINGER_BYTES:
        left = deadline - loop.time()
        if left <= 0:
            return
        try:
            message = await asyncio.wait_for(receive(), min(left, LINGER_IDLE_SECONDS))
        except asyncio.TimeoutError:
            return
        if message["type"] != "http.request":  # the client went away
            return
        dropped += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


# -- strict JSON -------------------------------------------------------------------------------------
def parse_json(body: bytes) -> Any:
    """json.loads, strict. Every failure is a json.JSONDecodeError, which FastAPI turns into a 422
    (a RecursionError or ValueError would become a bare 400 there, or a 500 further on)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise json.JSONDecodeError("invalid UTF-8", "", exc.start) from None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise json.JSONDecodeError(exc.msg, "", exc.pos) from None  # without the body, kept by FastAPI otherwise
    except RecursionError:
        raise json.JSONDecodeError("arrays or objects nested too deeply", "", 0) from None
    except ValueError:  # an integer of more than 4300 digits (sys.set_int_max_str_digits)
        raise json.JSONDecodeError("a number has too many digits", "", 0) from None


def _no_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not JSON: send a finite number", "", 0)


class _StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """A route whose JSON body goes through parse_json (FastAPI's way to change how a route reads
    its request: https://fastapi.tiangolo.com/how-to/custom-request-and-route/)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(_StrictJSONRequest(request.scope, request.receive))

        return strict


# -- what a 422 says ---------------------------------------------------------------------------------
def problems(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """pydantic's or FastAPI's errors as {loc, msg, type}, without `input` or `ctx` (which copy the
    caller's value back), at most MAX_PROBLEMS of them and a last one counting the rest."""
    shown = [_problem(error) for error in errors[:MAX_PROBLEMS]]
    if len(errors) > MAX_PROBLEMS:
        shown.append({"loc": [], "msg": f"and {len(errors) - MAX_PROBLEMS} more problems", "type": "too_many_errors"})
    return shown


def _problem(error: dict[str, Any]) -> dict[str, Any]:
    loc = [part if isinstance(part, int) else _field(part) for part in error.get("loc", ())]
    kind = str(error.get("type", "invalid"))
    message = str(error.get("msg", "invalid"))
    if kind == "json_invalid":  # the position is FastAPI's loc; the parser's reason is in ctx
        reason = str((error.get("ctx") or {}).get("error", "malformed"))
        where = f" at character {loc[1]}" if len(loc) > 1 and loc[1] else ""
        loc, message = loc[:1], f"the body is not valid JSON: {reason}{where}"
    elif kind == "missing" and loc == ["body"]:
        message = "the body is empty: send a JSON object"
    elif kind in ("model_attributes_type", "model_type", "dict_type") and loc in (["body"], []):
        message = "the body must be a JSON object (Content-Type: application/json)"
    return {"loc": loc, "msg": _cut(" ".join(message.split()), MAX_MESSAGE_CHARS), "type": kind}


def describe(errors: list[dict[str, Any]]) -> str:
    """The same problems on one line, `field: rule; ...`: the queue handler's error result."""
    parts = []
    for problem in problems(errors):
        where = ".".join(str(part) for part in problem["loc"] if part != "body")
        parts.append(f"{where}: {problem['msg']}" if where else problem["msg"])
    return "; ".join(parts)


def _field(part: Any) -> str:
    return _cut(str(part), MAX_FIELD_CHARS)


def _cut(text: str, limit: int) -> str:
    # A lone surrogate (a JSON "\\ud800" in a field name) cannot be encoded as UTF-8: the response would fail.
    text = text.encode("utf-8", "replace").decode("utf-8")
    return text if len(text) <= limit else f"{text[:limit]}..."
