"""What a server facing a network needs: an API key, adapter paths confined to one directory, a body limit.

- :class:`ApiKeyMiddleware`: every ``/v1/...`` request must carry ``Authorization: Bearer <key>`` (what the
  OpenAI clients send); otherwise a 401 in OpenAI's error shape. ``/health``, ``/metrics`` and the OpenAPI
  pages stay open, as in vLLM (a load balancer or Prometheus probes them without a key).
- :func:`adapter_path`: a path a client sends (``lora_path``, or an adapter's name) resolved inside the
  adapter root: no ``..``, no absolute path outside it, symlinks resolved before the check, so a link inside
  the root that points elsewhere is refused too.
- :class:`BodyLimitMiddleware`: a body larger than the limit is a 413, whether it says its length
  (``Content-Length``, refused before it is read) or streams it in chunks (refused once the limit is passed).
"""
import hmac
import json
import os
import re
from typing import Callable, Optional

from starlette.exceptions import HTTPException

from ..utils import logger
from .status import ServingError, StatusCode

ADAPTER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
"""An adapter name that is also a plain directory name (no separators, not ``.`` or ``..``)."""
ADAPTER_CONFIG = "adapter_config.json"


async def _send_json(send, status: int, body: dict, headers=()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})


def error_body(message: str, kind: str, code: str, param: Optional[str] = None) -> dict:
    """OpenAI's error body."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class ApiKeyMiddleware:
    """Refuses ``/v1/...`` requests without ``Authorization: Bearer <api_key>`` (401, OpenAI's body).

    Args:
        app: the ASGI app to protect.
        api_key: the key clients must send.
        on_refused: called with (status, code) for each refusal (the server's error counter).
    """

    def __init__(self, app, api_key: str, on_refused: Optional[Callable[[int, str], None]] = None):
        self.app = app
        self.expected = f"Bearer {api_key}".encode()
        self.on_refused = on_refused

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1") and scope.get("method") != "OPTIONS":
            sent = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(sent, self.expected):  # constant time: the key is not guessed byte by byte
                message = ("missing API key: send the header 'Authorization: Bearer <key>' (the openai client's "
                           "api_key)" if not sent else "incorrect API key provided")
                if self.on_refused is not None:
                    self.on_refused(401, "invalid_api_key")
                await _send_json(send, 401, error_body(message, "invalid_request_error", "invalid_api_key"),
                                 [(b"www-authenticate", b"Bearer")])
                return
        await self.app(scope, receive, send)


DRAIN_BYTES = 1 << 20  # what a refused chunked body is read on for, at most, before the 413


class BodyLimitMiddleware:
    """Refuses request bodies over ``max_bytes`` with a 413 (OpenAI's error body).

    Args:
        app: the ASGI app.
        max_bytes: the largest body accepted.
        on_refused: called with (status, code) for a body refused before it is read (one refused while
            it is read is answered, and counted, by the app's HTTPException handler).
    """

    def __init__(self, app, max_bytes: int, on_refused: Optional[Callable[[int, str], None]] = None):
        self.app = app
        self.max_bytes = max_bytes
        self.on_refused = on_refused

    def _message(self, found: str) -> str:
        return f"the request body is {found}; the server accepts at most {self.max_bytes} bytes (--max-body-bytes)"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            if self.on_refused is not None:
                self.on_refused(413, "request_too_large")
            await _send_json(send, 413, error_body(self._message(f"{int(length)} bytes"), "invalid_request_error",
                                                   "request_too_large"))
            return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # read on (up to DRAIN_BYTES) so a client still sending gets the 413, not a reset connection
                    drained = 0
                    while message.get("more_body", False) and drained < DRAIN_BYTES:
                        message = await receive()
                        drained += len(message.get("body", b""))
                    # raised inside the route's body read: the app's HTTPException handler answers it
                    raise HTTPException(413, self._message(f"over {self.max_bytes} bytes (sent in chunks)"))
            return message

        await self.app(scope, limited_receive, send)


def adapter_path(root: str, path: str) -> str:
    """The real path of adapter ``path`` if it lies inside ``root``; raises otherwise.

    Args:
        root: the adapter root (``--lora-root``).
        path: a path relative to the root (``my-adapter``, ``team/a1``) or an absolute path inside it.

    Returns:
        The resolved path (symlinks followed), inside the resolved root.

    Raises:
        ServingError: INVALID_REQUEST when the path has ``..`` parts or resolves outside the root.
    """
    if not isinstance(path, str) or not path or "\x00" in path:
        raise ServingError(StatusCode.INVALID_REQUEST, f"lora_path must be a non-empty path, found {path!r}")
    if ".." in path.replace("\\", "/").split("/"):
        raise ServingError(StatusCode.INVALID_REQUEST, f"lora_path {path!r} contains '..'; give a path inside the "
                                                        "adapter root (--lora-root)")
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, path))  # an absolute path replaces the root here
    if os.path.commonpath([real, real_root]) != real_root:
        raise ServingError(StatusCode.INVALID_REQUEST, f"lora_path {path!r} is outside the adapter root "
                                                        "(--lora-root); only adapters inside it can be loaded")
    return real


def adapters_under(root: str) -> dict:
    """``{name: path}`` of every directory directly under ``root`` that holds an ``adapter_config.json``
    and whose name is a valid adapter name (others are skipped)."""
    found = {}
    for name in sorted(os.listdir(root)):
        if ADAPTER_NAME.fullmatch(name) and os.path.isfile(os.path.join(root, name, ADAPTER_CONFIG)):
            try:
                found[name] = adapter_path(root, name)
            except ServingError as err:  # a symlink leading out of the root
                logger.warning("adapter %s skipped: %s", name, err.message)
    return found
