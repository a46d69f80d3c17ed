"""An OpenAI-compatible HTTP server for one model of the serving :class:`Engine` and its LoRA adapters.

Endpoints (request and response bodies are OpenAI's, https://platform.openai.com/docs/api-reference):

=============================  ===========================================================================
``POST /v1/completions``       ``prompt`` (text or token ids), streamed or not; extensions ``top_k``,
                               ``repetition_penalty``
``POST /v1/chat/completions``  ``messages`` rendered with the tokenizer's chat template
``GET  /v1/models``            the base model and every adapter it knows, in a pool slot or not (``parent``: the base)
``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path"}`` (vLLM's endpoint names)
``POST /v1/unload_lora_adapter`` ``{"lora_name"}``
``GET  /metrics``              Prometheus text: counters, queue depth, latency histograms (``metrics.py``)
``GET  /metrics/json``         the engine's counters per adapter (JSON)
``GET  /health``               200 ``{"status": "ok"}`` while the model runs, else 503
=============================  ===========================================================================

Facing a network (:class:`ServerConfig`, ``security.py``): with an ``api_key`` every ``/v1`` request needs
``Authorization: Bearer <key>`` (401 otherwise; ``/health`` and ``/metrics`` stay open); adapters load at
run time only with ``allow_runtime_lora``, and only from inside ``lora_root`` (a request may also name any
adapter directory under the root as its ``model``: it is registered and swapped into the pool on demand);
bodies, prompts, ``max_tokens`` and each request's time are limited, each refusal a 4xx with a message.

A request's ``model`` picks the adapter: the base model's name means no adapter, an adapter's name means
that adapter, anything else is a 404. Every error body has OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``; the engine's refusals map to HTTP statuses through
:data:`HTTP_STATUS` (a full queue is a 429 with ``Retry-After``).

Example::

    engine = Engine()
    engine.install_model(RuntimeConfigBuilder("smollm2", model="smollm2_135m_instruct").build())
    engine.start_model("smollm2")
    serve(engine, "smollm2", port=8000)   # or: python -m mindformers.serving --help
"""
import asyncio
import contextlib
import dataclasses
import json
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Dict, List, Optional, Union

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..generation.streamers import IncrementalDecoder
from ..utils import logger
from .metrics import CONTENT_TYPE, RequestTimer, ServerMetrics
from .security import ADAPTER_CONFIG, ADAPTER_NAME, ApiKeyMiddleware, BodyLimitMiddleware, adapter_path, adapters_under
from .status import HTTP_STATUS, ServingError, Status, StatusCode

OWNER = "mindformers"
MAX_STOP_STRINGS, MAX_STOP_LENGTH = 4, 256  # OpenAI allows up to 4 stop sequences


@dataclasses.dataclass
class ServerConfig:
    """What the HTTP server allows (the engine's own limits are in :class:`RuntimeConfig`)."""

    api_key: Optional[str] = None
    """Clients must send ``Authorization: Bearer <api_key>`` on ``/v1`` endpoints; None: no key needed."""
    lora_root: Optional[str] = None
    """The directory adapters are served from: every ``<root>/<name>/adapter_config.json`` is served as model
    ``<name>`` (loaded into a pool slot on first use), and runtime loads resolve their paths inside it."""
    allow_runtime_lora: bool = False
    """Allow ``POST /v1/load_lora_adapter`` and ``/v1/unload_lora_adapter`` (needs ``lora_root``)."""
    max_body_bytes: int = 1 << 20
    """Largest request body (413 beyond it)."""
    max_prompt_tokens: Optional[int] = None
    """Longest prompt in tokens; None: whatever the model's ``max_length`` leaves room for."""
    max_tokens: Optional[int] = None
    """Largest ``max_tokens`` a request may ask for; None: the model's ``max_length``."""
    request_timeout: Optional[float] = 600.0
    """Seconds a request may take from arrival to its last token (waiting included); then it is stopped and
    answered 408 (a stream ends with an error event). None or 0: no limit."""

    def __post_init__(self):
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key.strip()):
            raise ValueError(f"api_key must be a non-empty string, found {self.api_key!r}")
        if self.lora_root is not None and not os.path.isdir(self.lora_root):
            raise ValueError(f"lora_root must be an existing directory, found {self.lora_root!r}")
        if self.allow_runtime_lora and self.lora_root is None:
            raise ValueError("allow_runtime_lora needs lora_root: the directory adapters may be loaded from "
                             "(--lora-root)")
        for name in ("max_body_bytes", "max_prompt_tokens", "max_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ValueError(f"{name} must be a positive integer, found {value!r}")
        if self.request_timeout is not None and not (isinstance(self.request_timeout, (int, float))
                                                     and self.request_timeout >= 0):
            raise ValueError(f"request_timeout must be a number of seconds >= 0, found {self.request_timeout!r}")
        self.request_timeout = self.request_timeout or None


# ----------------------------------------------------------------------------------------------- errors


class APIError(Exception):
    """An error answered with OpenAI's error body.

    Args:
        status: the HTTP status.
        message: what went wrong and what to do.
        param: the request field at fault, if any.
        code: a short machine-readable reason (``model_not_found``, ``queue_full``, ...).
        headers: extra response headers (``Retry-After``).
    """

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    @classmethod
    def refused(cls, status: Status, param: Optional[str] = None) -> "APIError":
        """The engine's refusal ``status`` as an HTTP error (a full queue asks to retry in a second)."""
        headers = {"Retry-After": "1"} if status.code is StatusCode.QUEUE_FULL else None
        return cls(HTTP_STATUS[status.code], status.message, param, status.code.value, headers)

    def body(self) -> Dict[str, Any]:
        kind = "invalid_request_error"
        if self.status == 429:
            kind = "rate_limit_error"
        elif self.status >= 500:
            kind = "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _validation_error(exc: RequestValidationError) -> APIError:
    """One 400 naming the first bad field (FastAPI's default is a 422 with its own body)."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": "invalid"}
    if first.get("type") == "json_invalid":
        return APIError(400, f"the request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}",
                        code="invalid_json")
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = loc[0] if loc else None  # the request's field; the message has the path inside it
    message = f"{'.'.join(loc)}: {first['msg']}" if loc else first["msg"]
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem(s))"
    return APIError(400, message, param, code=first.get("type"))


# --------------------------------------------------------------------------------------- request bodies


class StreamOptions(BaseModel):
    include_usage: bool = False
    """Send a last chunk with ``usage`` (and no choices) before ``[DONE]``."""


class _GenerationRequest(BaseModel):
    """Settings shared by completions and chat completions. Unknown OpenAI fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    """0 or absent: greedy decoding; > 0: sampling at this temperature."""
    top_p: Optional[float] = Field(None, gt=0, le=1)
    top_k: Optional[int] = Field(None, ge=0)
    """Extension: sample among the k most likely tokens (0 or absent: all, as OpenAI does)."""
    repetition_penalty: Optional[float] = Field(None, gt=0)
    """Extension: CTRL's penalty on tokens already in the sequence (1 disables)."""
    seed: Optional[int] = None
    stop: Union[str, List[str], None] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: int = 1


class CompletionRequest(_GenerationRequest):
    prompt: Union[str, List[StrictInt]]
    max_tokens: Optional[int] = Field(16, ge=1)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_call_id, ... are passed on to the chat template

    role: str
    content: Union[str, List[Dict[str, Any]], None] = None
    """Text, or OpenAI's content parts of which only ``{"type": "text", "text": ...}`` are supported."""


class ChatCompletionRequest(_GenerationRequest):
    messages: List[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    """OpenAI's newer name of ``max_tokens`` (wins when both are given)."""


class LoadLoraRequest(BaseModel):
    lora_name: str = Field(min_length=1)
    lora_path: Optional[str] = Field(None, min_length=1)
    """A directory inside the adapter root (relative to it, or absolute); absent: ``<root>/<lora_name>``."""


class UnloadLoraRequest(BaseModel):
    lora_name: str = Field(min_length=1)


# ------------------------------------------------------------------------------------------ generation


class IncrementalText(IncrementalDecoder):
    """The text of generated ids, released piece by piece as it becomes final, cut at stop strings.

    :class:`~mindformers.generation.streamers.IncrementalDecoder` decodes all the ids so far and holds back
    a trailing "\\ufffd" (an incomplete UTF-8 character); words are not held back until their space. Then:

    - the text ends at the first stop string (left out of the text, as OpenAI does; ``stopped`` is then set);
    - a tail that may be the beginning of a stop string (``"\\n"`` when a stop string is ``"\\n\\n"``) is
      held back.

    The engine ends the request at a stop string too (``stop_strings``); the cut here is still needed, since
    the engine returns the tokens up to the one that completes the stop string.

    Args:
        tokenizer: has ``decode(ids, skip_special_tokens=True)``.
        stop: strings that end the text at their first occurrence.
    """

    def __init__(self, tokenizer: Any, stop: List[str]):
        super().__init__(tokenizer, whole_words=False, skip_special_tokens=True)
        self.stop = stop
        self.stopped = False  # a stop string was found

    def finish(self) -> str:
        """Generation ended: release everything left (a lone U+FFFD stays, the bytes never completed)."""
        return self.flush()

    def decode(self) -> str:
        text = super().decode()
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.stopped = True
            return text[:min(hits)]
        return text

    def final_length(self, text: str) -> int:
        if self.stopped:
            return len(text)
        end = super().final_length(text)
        return end - self._stop_prefix_len(text[:end])

    def _stop_prefix_len(self, text: str) -> int:
        """Length of the longest end of ``text`` that begins a stop string."""
        return max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


class _Generation:
    """One admitted request: reads its token queue off the event loop and turns it into text pieces.

    Iterate :meth:`pieces` once; afterwards ``finish_reason``, ``prompt_tokens`` and ``completion_tokens``
    are set, and ``timed_out`` if the request passed its ``deadline`` (it is then stopped). The request is
    released when iteration ends, also when it is abandoned (client gone); a stream that never started
    iterating is released by :class:`_ReleasingStream`.
    """

    def __init__(self, engine: Any, model: str, handle: Any, queue: Any, stop: List[str], reader: ThreadPoolExecutor,
                 timer: RequestTimer, deadline: Optional[float]):
        self.engine, self.model, self.handle, self.queue, self.reader = engine, model, handle, queue, reader
        self.text = IncrementalText(engine.tokenizer(model), stop)
        self.finish_reason: Optional[str] = None
        self.timer, self.deadline = timer, deadline
        self.timed_out = False

    @property
    def prompt_tokens(self) -> int:
        return int(self.queue.prompt_tokens)

    @property
    def completion_tokens(self) -> int:
        return len(self.text.ids)

    def usage(self) -> Dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def timeout_error(self) -> "APIError":
        return APIError(408, f"the request took longer than the server's limit (--request-timeout) and was stopped "
                             f"after {self.completion_tokens} generated token(s); ask for fewer tokens or retry later",
                        code="request_timeout", headers={"x-should-retry": "false"})  # the openai client retries 408s

    async def pieces(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        try:
            while True:
                wait = None if self.deadline is None else max(self.deadline - time.monotonic(), 0.0)
                ids = await loop.run_in_executor(self.reader, self.queue.Get, wait)
                if ids is None:
                    break
                if not ids:  # past the deadline and nothing new (Get(0) still hands over what is there)
                    self.timed_out = True
                    break
                self.timer.tokens(len(ids))
                piece = self.text.add(list(ids))
                if piece:
                    yield piece
                if self.text.stopped:
                    break
            if self.timed_out:
                return
            piece = self.text.finish()
            if piece:
                yield piece
            self.finish_reason = "stop" if self.text.stopped else (self.queue.finish_reason or "stop")
            self.timer.done()
        finally:
            self.release()

    def release(self) -> None:
        """Interrupt the request if it still runs (a stop string, a client that went away) and free it."""
        if self.handle is not None:
            self.engine.release_request(self.model, self.handle)
            self.handle = None


class _ReleasingStream(StreamingResponse):
    """A stream that releases its request however it ends: a client that disconnects before the first
    chunk cancels the response before its generator starts, so the generator's own ``finally`` never runs."""

    def __init__(self, content: AsyncIterator[str], generation: _Generation):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.generation = generation

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.generation.release()


def _sse(data: Any) -> str:
    """One server-sent event as OpenAI streams them."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


# ------------------------------------------------------------------------------------------------- app


def create_app(engine: Any, model_name: str, config: Optional[ServerConfig] = None) -> FastAPI:
    """The FastAPI app serving ``model_name`` (installed and started in ``engine``) and its adapters.

    Args:
        engine: a :class:`mindformers.serving.Engine`.
        model_name: the installed model's name; it is also the ``model`` requests use for the base model.
        config: what the server allows (key, adapter root, limits); None: ``ServerConfig()``, i.e. no key,
            no runtime adapter loading, the default limits.

    Returns:
        The app (run it with uvicorn, or :func:`serve`).
    """
    config = config or ServerConfig()
    limits = engine.runtime_config(model_name)
    max_tokens_limit = config.max_tokens or limits.max_length
    if config.lora_root is not None:  # every adapter directory under the root is served by its name
        for name, path in adapters_under(config.lora_root).items():
            try:
                engine.register_lora(model_name, name, path)
            except ServingError as err:
                logger.warning("adapter %s under %s not served: %s", name, config.lora_root, err.message)
    metrics = ServerMetrics(engine, model_name)
    # Every admitted request waits in queue.Get in a thread while its tokens come. The shared thread pool of
    # starlette (40 threads) would make concurrent streams wait for one another, so queue reads get their
    # own pool, as large as the number of requests the engine admits (running + waiting), plus some slack
    # for reads of requests whose client has just gone away.
    reader = ThreadPoolExecutor(max_workers=limits.max_batch + limits.max_queue + 8, thread_name_prefix="queue-read")

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        reader.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title=f"mindformers serving: {model_name}", lifespan=lifespan)
    # the outermost runs first: the key is checked before the body is read
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes, on_refused=metrics.error)
    if config.api_key is not None:
        app.add_middleware(ApiKeyMiddleware, api_key=config.api_key, on_refused=metrics.error)

    def answer(error: APIError) -> JSONResponse:
        metrics.error(error.status, error.code)
        return error.response()

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError):
        return answer(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError):
        return answer(_validation_error(exc))

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Request, exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status_code)
        return answer(APIError(exc.status_code, str(exc.detail), code=code, headers=getattr(exc, "headers", None)))

    @app.exception_handler(ServingError)
    async def _refused(_request: Request, exc: ServingError):
        return answer(APIError.refused(exc.status))

    @app.exception_handler(Exception)
    async def _crashed(_request: Request, exc: Exception):  # logged by starlette, answered in OpenAI's shape
        return answer(APIError(500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error"))

    def adapter_of(model: str) -> Optional[str]:
        """The ``lora_name`` a request's ``model`` selects (None: the base model); an adapter directory
        under the adapter root that appeared since start is registered here."""
        if model == model_name:
            return None
        known = engine.loras(model_name)
        if model in known:
            return model
        if (config.lora_root is not None and ADAPTER_NAME.fullmatch(model)
                and os.path.isfile(os.path.join(config.lora_root, model, ADAPTER_CONFIG))):
            try:
                engine.register_lora(model_name, model, adapter_path(config.lora_root, model))
            except ServingError as exc:
                raise APIError.refused(exc.status, "model") from exc
            return model
        raise APIError(404, f"model {model!r} does not exist; served: {[model_name, *known]} "
                            "(GET /v1/models lists them)", "model", "model_not_found")

    def gen_config(body: _GenerationRequest, max_tokens: Optional[int]) -> Dict[str, Any]:
        if body.n != 1:
            raise APIError(400, f"n must be 1 (one choice per request), found {body.n}", "n")
        if max_tokens is not None and max_tokens > max_tokens_limit:
            raise APIError(400, f"max_tokens is {max_tokens}; this server allows at most {max_tokens_limit}",
                           "max_tokens", "max_tokens_too_large")
        cfg: Dict[str, Any] = {"lora_name": adapter_of(body.model)}
        if max_tokens is None:
            cfg["max_length"] = limits.max_length  # as many new tokens as the prompt leaves room for
        else:
            cfg["max_new_tokens"] = max_tokens
        if body.temperature:
            # OpenAI samples from the whole distribution unless told otherwise: no top-k cut by default.
            cfg.update(do_sample=True, temperature=body.temperature, top_k=body.top_k or 0,
                       top_p=1.0 if body.top_p is None else body.top_p)
        else:
            cfg["do_sample"] = False
        if body.repetition_penalty is not None:
            cfg["repetition_penalty"] = body.repetition_penalty
        if body.seed is not None:
            cfg["seed"] = body.seed
        return cfg

    def stop_strings(body: _GenerationRequest) -> List[str]:
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if any(not s for s in stop):
            raise APIError(400, "stop strings must not be empty", "stop")
        if len(stop) > MAX_STOP_STRINGS or any(len(s) > MAX_STOP_LENGTH for s in stop):
            raise APIError(400, f"at most {MAX_STOP_STRINGS} stop strings of at most {MAX_STOP_LENGTH} characters, "
                                f"found {len(stop)} of up to {max(map(len, stop))}", "stop")
        return stop

    def start(body: _GenerationRequest, prompt: Union[str, List[int]], max_tokens: Optional[int],
              arrived: float) -> _Generation:
        """Admit the request (blocking: the engine's lock and the tokenizer; call it in a thread)."""
        cfg, stop = gen_config(body, max_tokens), stop_strings(body)
        if stop:
            cfg["stop_strings"] = stop  # the engine stops decoding there; IncrementalText cuts the text
        tokenizer = engine.tokenizer(model_name)
        if isinstance(prompt, str) and tokenizer is not None:
            prompt = tokenizer.encode_prompts([prompt])[0]
        if config.max_prompt_tokens is not None and not isinstance(prompt, str) and len(prompt) > config.max_prompt_tokens:
            raise APIError(400, f"the prompt has {len(prompt)} tokens; this server allows at most "
                                f"{config.max_prompt_tokens} (--max-prompt-tokens)", "prompt", "prompt_too_long")
        begin = engine.start_request_text if isinstance(prompt, str) else engine.start_request_ids
        status, handle, queue = begin(model_name, prompt, cfg)
        if not status:
            raise APIError.refused(status, "model" if status.code is StatusCode.UNKNOWN_ADAPTER else None)
        deadline = None if config.request_timeout is None else arrived + config.request_timeout
        return _Generation(engine, model_name, handle, queue, stop, reader, metrics.timer(cfg["lora_name"]), deadline)

    def stream(gen: _Generation, chunk, body: _GenerationRequest, first: Optional[Dict] = None) -> StreamingResponse:
        """Server-sent events: ``first`` (if any), a chunk per text piece, the finish, usage, ``[DONE]``."""

        async def events() -> AsyncIterator[str]:
            if first is not None:
                yield _sse(first)
            async for piece in gen.pieces():
                yield _sse(chunk(piece, None))
            if gen.timed_out:  # the status line is sent: the error goes in the stream, as vLLM sends them
                error = gen.timeout_error()
                metrics.error(error.status, error.code)
                yield _sse(error.body())
                yield _sse("[DONE]")
                return
            yield _sse(chunk(None, gen.finish_reason))
            if body.stream_options and body.stream_options.include_usage:
                yield _sse({**chunk(None, None), "choices": [], "usage": gen.usage()})
            yield _sse("[DONE]")

        return _ReleasingStream(events(), gen)

    async def complete_text(gen: _Generation) -> str:
        text = "".join([piece async for piece in gen.pieces()])
        if gen.timed_out:
            raise gen.timeout_error()
        return text

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        gen = await run_in_threadpool(start, body, body.prompt, body.max_tokens, time.monotonic())
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": body.model}

        def chunk(text: Optional[str], finish_reason: Optional[str]) -> Dict:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
            return {**head, "choices": [choice]}

        if body.stream:
            return stream(gen, chunk, body)
        text = await complete_text(gen)
        return {**chunk(text, gen.finish_reason), "usage": gen.usage()}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest):
        arrived = time.monotonic()
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        messages = [_message_dict(m) for m in body.messages]
        try:
            prompt = engine.tokenizer(model_name).apply_chat_template(messages, tokenize=False,
                                                                      add_generation_prompt=True)
        except Exception as exc:  # the template raises on conversations it does not support (roles, order)
            raise APIError(400, f"the chat template cannot render these messages: {exc}", "messages") from exc
        gen = await run_in_threadpool(start, body, prompt, max_tokens, arrived)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": body.model}

        def chunk(text: Optional[str], finish_reason: Optional[str], delta: Optional[Dict] = None) -> Dict:
            delta = delta if delta is not None else ({} if text is None else {"content": text})
            return {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

        if body.stream:
            return stream(gen, chunk, body, first=chunk(None, None, {"role": "assistant", "content": ""}))
        text = await complete_text(gen)
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": gen.finish_reason}
        return {**head, "object": "chat.completion", "choices": [choice], "usage": gen.usage()}

    # The endpoints below are plain functions: FastAPI runs them in its thread pool, so the engine's lock
    # (held while an adapter loads) never blocks the event loop.
    @app.get("/v1/models")
    def models():
        created = int(time.time())
        base = {"id": model_name, "object": "model", "created": created, "owned_by": OWNER,
                "root": limits.model, "parent": None}
        adapters = [{"id": name, "object": "model", "created": created, "owned_by": OWNER,
                     "root": info.get("path"), "parent": model_name}
                    for name, info in engine.loras(model_name).items()]
        return {"object": "list", "data": [base, *adapters]}

    def runtime_lora_allowed() -> None:
        if not config.allow_runtime_lora:
            raise APIError(403, "loading and unloading adapters at run time is off on this server (start it with "
                                "--allow-runtime-lora and --lora-root)", code="runtime_lora_disabled")

    @app.post("/v1/load_lora_adapter")
    def load_lora_adapter(body: LoadLoraRequest):
        runtime_lora_allowed()
        if body.lora_path is None and not ADAPTER_NAME.fullmatch(body.lora_name):
            raise APIError(400, f"lora_name {body.lora_name!r} is not a directory name under the adapter root; give "
                                "lora_path", "lora_path")
        try:
            path = adapter_path(config.lora_root, body.lora_path or body.lora_name)
            engine.load_lora(model_name, body.lora_name, path)
        except ServingError as exc:
            param = "lora_path" if exc.code is StatusCode.INVALID_REQUEST else "lora_name"
            raise APIError.refused(exc.status, param) from exc
        return {"lora_name": body.lora_name, **engine.loras(model_name)[body.lora_name]}

    @app.post("/v1/unload_lora_adapter")
    def unload_lora_adapter(body: UnloadLoraRequest):
        runtime_lora_allowed()
        try:
            engine.unload_lora(model_name, body.lora_name)
        except ServingError as exc:
            raise APIError.refused(exc.status, "lora_name") from exc
        return {"lora_name": body.lora_name, "unloaded": True}

    @app.get("/metrics")
    def prometheus_metrics():
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/metrics/json")
    def json_metrics():
        return engine.metrics(model_name)

    @app.get("/health")
    def health():
        if not engine.is_running(model_name):
            raise APIError(503, f"model {model_name!r} is not running", code=StatusCode.NOT_RUNNING.value)
        return {"status": "ok"}

    return app


def _message_dict(message: ChatMessage) -> Dict[str, Any]:
    """A message as the chat template takes it: content parts joined into one text."""
    data = message.model_dump(exclude_none=True)
    if isinstance(message.content, list):
        texts = []
        for part in message.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(400, f"only text content parts are supported, found {part.get('type')!r}", "messages")
            texts.append(part["text"])
        data["content"] = "".join(texts)
    return data


def serve(engine: Any, model_name: str, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          config: Optional[ServerConfig] = None) -> None:
    """Serve ``model_name`` of ``engine`` over HTTP until interrupted (Ctrl-C).

    Args:
        engine: a :class:`mindformers.serving.Engine` with the model installed and started.
        model_name: the installed model's name (the ``model`` of base-model requests).
        host: the interface to listen on.
        port: the TCP port.
        log_level: uvicorn's log level.
        config: the key, adapter root and limits (:class:`ServerConfig`).
    """
    uvicorn.run(create_app(engine, model_name, config), host=host, port=port, log_level=log_level)
