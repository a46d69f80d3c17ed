"""The serving engine: continuous batching of requests that each pick their own LoRA adapter.

One scheduler thread per started model runs this loop::

    admit waiting requests into free rows (prefill each: its prompt's keys/values go into its cache row)
    decode one token for every running row in a single forward pass
    hand each row its token (queue), finish rows at end-of-sequence, a stop string or their length limit,
    free their rows

Requests join and leave between decode steps. Rows are ordered by adapter before each step, so each
adapter's rows form one segment of the batch; the shared base weights are multiplied once and each
segment adds its own low-rank update (``lora.py``); a decode step with no adapter rows runs graphs
compiled without the adapter kernel. Token choice and stopping are ``generate()``'s (a
:class:`~mindformers.generation.decoding.DecodingState` per request), and so are the default settings and
the length limit (capped at the runtime ``max_length``).

Shapes: the KV cache is ``[max_batch, kv_heads, max_length + 1, head_dim]`` per layer (the extra slot
takes the prompt padding's keys, always masked). A request's prompt is left-padded to a power of two
(one prefill graph per bucket) and its real tokens go to slots ``0..n-1`` of its row; a decode step runs
on the running rows padded to a power of two (one graph per bucket, rows picked by ``cache_rows``).
"""
import collections
import itertools
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import mindspore as ms
from mindspore import Tensor
from threadpoolctl import threadpool_limits

from ..generation.config import GenerationConfig
from ..generation.decoding import DecodingState
from ..generation.utils import DecodeStep, generation_settings, length_limit, prompt_adapter_positions
from ..models.common.attention import KVCache
from ..utils import EXECUTION_LOCK, logger
from .config import RuntimeConfig
from .lora import AdapterPool, attach_pool
from .status import GenerateStatus, ServingError, Status, StatusCode

MIN_PROMPT_BUCKET = 16
BASE = "base"  # the metrics key of requests without an adapter
REQUEST_KEYS = ("max_new_tokens", "max_length", "min_new_tokens", "do_sample", "top_k", "top_p", "temperature",
                "repetition_penalty", "eos_token_id", "stop_strings", "seed", "lora_name")
_RUNNING = (GenerateStatus.Init, GenerateStatus.ContextFinished, GenerateStatus.Generating)


def _power_of_two(n: int, low: int = 1) -> int:
    size = low
    while size < n:
        size *= 2
    return size


class ResultQueue:
    """The tokens of one request, as they are produced (MindIE's ``Get`` / ``GenerateStatus`` spelling).

    Attributes:
        prompt_tokens: length of the prompt.
        output_ids: every token generated so far.
        finish_reason: "stop" (end-of-sequence or a stop string), "length", "interrupted", or None while
            running.
    """

    def __init__(self, prompt_tokens: int):
        self.prompt_tokens = prompt_tokens
        self.output_ids: List[int] = []
        self.finish_reason: Optional[str] = None
        self._status = GenerateStatus.Init
        self._unread = 0
        self._cond = threading.Condition()

    def Get(self, timeout: Optional[float] = None) -> Optional[List[int]]:  # pylint: disable=invalid-name
        """The tokens produced since the last call, waiting for at least one; None once the request has
        ended and everything was read; [] if ``timeout`` seconds pass first."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._unread or self._status not in _RUNNING, timeout):
                return []
            if not self._unread:
                return None
            new = self.output_ids[len(self.output_ids) - self._unread:]
            self._unread = 0
            return new

    def GenerateStatus(self) -> GenerateStatus:  # pylint: disable=invalid-name
        """The request's state as its reader sees it: an ended request reports ``Generating`` until its
        last tokens were read, so ``while status in (Init, ContextFinished, Generating): Get()`` reads all."""
        with self._cond:
            if self._status not in _RUNNING and self._unread:
                return GenerateStatus.Generating
            return self._status

    def _push(self, token: int, status: GenerateStatus) -> None:
        with self._cond:
            self.output_ids.append(token)
            self._unread += 1
            self._status = status
            self._cond.notify_all()

    def _end(self, reason: str) -> None:
        with self._cond:
            if self._status in _RUNNING:
                self.finish_reason = reason
                self._status = GenerateStatus.GenerateInterrupted if reason == "interrupted" else GenerateStatus.GenerateFinished
            self._cond.notify_all()


class _Request:
    """A request's settings and decoding state (its own sampler, seeded with its ``seed``)."""

    def __init__(self, handle: int, ids: List[int], config: GenerationConfig, lora: Optional[str], limit: int,
                 vocab: int, tokenizer: Any):
        self.handle, self.ids, self.config, self.lora = handle, ids, config, lora
        self.queue = ResultQueue(len(ids))
        self.decoding = DecodingState(config, vocab, [ids], len(ids), limit, tokenizer)
        self.row: Optional[int] = None
        self.released = False

    def choose(self, logits: np.ndarray) -> Tuple[int, Optional[str]]:
        """The next token from this request's logits [vocab], and "stop"/"length" if it ends the request."""
        tokens, reasons = self.decoding.step(logits[None])
        return int(tokens[0]), reasons[0]


class _ServedModel:
    """One installed model: weights, adapter pool, KV cache, requests and the scheduler thread."""

    def __init__(self, config: RuntimeConfig):
        from ..auto import AutoModel, AutoTokenizer

        self.config = config
        try:
            self.model = AutoModel.from_pretrained(config.model)
        except (ValueError, FileNotFoundError, KeyError) as err:
            raise ServingError(StatusCode.INVALID_REQUEST, f"cannot load model {config.model!r}: {err}") from None
        if not hasattr(self.model, "decode_logits"):
            raise ServingError(StatusCode.INVALID_REQUEST, f"{config.model!r} is a {type(self.model).__name__}, "
                                                            "not a causal language model; only those are served")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(config.model)
        except (ValueError, FileNotFoundError, KeyError) as err:
            logger.warning("no tokenizer for %s (%s): only token-id requests will be served", config.model, err)
            self.tokenizer = None
        model_config = self.model.config
        if config.max_length > model_config.max_position_embeddings:
            raise ServingError(StatusCode.INVALID_REQUEST,
                               f"max_length={config.max_length} exceeds the model's context of "
                               f"{model_config.max_position_embeddings} tokens (max_position_embeddings)")
        self.vocab = model_config.vocab_size
        try:
            self.pool: AdapterPool = attach_pool(self.model, config.lora_target_modules, config.lora_max_num,
                                                 config.lora_max_rank, config.max_batch, config.lora_kernel)
        except ValueError as err:
            raise ServingError(StatusCode.INVALID_REQUEST, str(err)) from None
        self.cache_len = config.max_length + 1
        self.trash_slot = config.max_length  # prompt padding writes here; never attended
        cache = KVCache.for_model(self.model, config.max_batch, self.cache_len)
        self.step = DecodeStep(self.model, cache, "jit")
        # decode steps of batches without adapter rows: the same cache, graphs without the adapter kernel
        self.base_step = DecodeStep(self.model, cache, "jit")
        self.slot_mask = np.zeros((config.max_batch, self.cache_len), np.int32)
        self.lengths = np.zeros(config.max_batch, np.int32)  # slots used by each row's request
        self.last_tokens = np.zeros(config.max_batch, np.int64)
        self.defaults = generation_settings(self.model, None, dict(max_length=config.max_length, max_new_tokens=None,
                                                                   num_beams=1, num_return_sequences=1))

        self.cond = threading.Condition()
        self.waiting: collections.deque = collections.deque()
        self.running: Dict[int, _Request] = {}  # row -> request
        self.requests: Dict[int, _Request] = {}  # handle -> request, until released
        self.counters: Dict[str, Dict[str, int]] = collections.defaultdict(collections.Counter)
        self.thread: Optional[threading.Thread] = None
        self.stopping = False
        self.warm = False

    # ------------------------------------------------------------------ requests
    def settings(self, gen_cfg: Optional[Dict[str, Any]]) -> Tuple[GenerationConfig, Optional[str]]:
        gen_cfg = dict(gen_cfg or {})
        lora = gen_cfg.pop("lora_name", None)
        unknown = sorted(set(gen_cfg) - set(REQUEST_KEYS))
        if unknown:
            raise ServingError(StatusCode.INVALID_REQUEST, f"unknown generation setting(s) {unknown}; valid: "
                                                            f"{', '.join(REQUEST_KEYS)}")
        try:
            config = self.defaults.update(**gen_cfg)
        except (ValueError, TypeError) as err:
            raise ServingError(StatusCode.INVALID_REQUEST, str(err)) from None
        if lora is not None and lora not in self.pool.slots:
            raise ServingError(StatusCode.UNKNOWN_ADAPTER, f"no adapter called {lora!r} is loaded; loaded: "
                                                            f"{sorted(self.pool.slots)}")
        if config.stop_strings and self.tokenizer is None:
            raise ServingError(StatusCode.INVALID_REQUEST, f"model {self.config.model_name!r} has no tokenizer to "
                                                            "find stop_strings in the generated text; leave them out")
        return config, lora

    def limit(self, config: GenerationConfig, prompt_len: int) -> int:
        """Total length (prompt + new tokens) the request may reach: generate()'s limit, capped at max_length."""
        try:
            return length_limit(config, prompt_len, self.model.config.max_position_embeddings,
                                prompt_adapter_positions(self.model), cap=self.config.max_length)
        except ValueError as err:
            raise ServingError(StatusCode.INVALID_REQUEST, str(err)) from None

    def submit(self, request: _Request) -> Status:
        with self.cond:
            if self.thread is None or self.stopping:
                return Status(StatusCode.NOT_RUNNING, f"model {self.config.model_name!r} is not started; "
                                                      f"call start_model first")
            if request.lora is not None and request.lora not in self.pool.slots:  # unloaded meanwhile
                return Status(StatusCode.UNKNOWN_ADAPTER, f"no adapter called {request.lora!r} is loaded")
            free_rows = self.config.max_batch - len(self.running)
            if len(self.waiting) >= self.config.max_queue + free_rows:
                return Status(StatusCode.QUEUE_FULL, f"{len(self.waiting)} requests are waiting (max_queue="
                                                     f"{self.config.max_queue}); retry later")
            self.waiting.append(request)
            self.requests[request.handle] = request
            counter = self.counters[request.lora or BASE]
            counter["requests"] += 1
            counter["prompt_tokens"] += len(request.ids)
            self.cond.notify_all()
        return Status()

    def release(self, handle: int) -> Status:
        with self.cond:
            request = self.requests.pop(handle, None)
            if request is None:
                return Status(StatusCode.INVALID_REQUEST, f"no request with handle {handle}")
            request.released = True
            if request in self.waiting:
                self.waiting.remove(request)
                self._end(request, "interrupted")
            self.cond.notify_all()
        return Status()

    def in_use(self, lora: str) -> int:
        return sum(r.lora == lora for r in itertools.chain(self.waiting, self.running.values()))

    def _end(self, request: _Request, reason: str) -> None:
        request.queue._end(reason)  # pylint: disable=protected-access
        self.counters[request.lora or BASE]["interrupted" if reason == "interrupted" else "finished"] += 1

    # ------------------------------------------------------------------ scheduler
    def start(self) -> None:
        # The adapter kernel's products are small ([rows, in] x [in, r]); OpenBLAS threads then only add
        # synchronisation next to MindSpore's own threads (measured 3x slower on 2 cores). Process-wide.
        threadpool_limits(limits=1, user_api="blas")
        with self.cond:
            if self.thread is not None:
                return
        if self.config.warmup and not self.warm:
            start = time.perf_counter()
            self.warmup()
            self.warm = True
            logger.info("%s: graphs compiled in %.0f s", self.config.model_name, time.perf_counter() - start)
        with self.cond:
            self.stopping = False
            self.thread = threading.Thread(target=self._loop, name=f"serving-{self.config.model_name}", daemon=True)
            self.thread.start()

    def stop(self) -> None:
        with self.cond:
            thread, self.stopping = self.thread, True
            self.cond.notify_all()
        if thread is not None:
            thread.join()
        with self.cond:
            self.thread = None

    def _loop(self) -> None:
        try:
            while True:
                with self.cond:
                    self.cond.wait_for(lambda: self.stopping or self.waiting or self.running)
                    if self.stopping:
                        break
                    for row, request in list(self.running.items()):
                        if request.released:
                            self._free(row, "interrupted")
                    admitted = []
                    while self.waiting and len(self.running) + len(admitted) < self.config.max_batch:
                        admitted.append(self.waiting.popleft())
                    rows = [r for r in range(self.config.max_batch) if r not in self.running]
                    for request, row in zip(admitted, rows):
                        request.row = row
                        self.running[row] = request
                for request in admitted:
                    self._prefill(request)
                if self.running:
                    self._decode()
        except Exception:  # a failed step must not leave clients waiting forever
            logger.exception("serving loop of %s failed; interrupting its requests", self.config.model_name)
            raise
        finally:
            with self.cond:
                for row in list(self.running):
                    self._free(row, "interrupted")
                while self.waiting:
                    self._end(self.waiting.popleft(), "interrupted")
                self.stopping = True

    def _free(self, row: int, reason: str) -> None:
        request = self.running.pop(row)
        self._end(request, reason)

    def _deliver(self, request: _Request, token: int, reason: Optional[str], first: bool) -> None:
        """Give ``token`` to the request; end it if ``reason`` says so ("stop" or "length")."""
        with self.cond:
            if request.row not in self.running or self.running[request.row] is not request:
                return
            request.queue._push(token, GenerateStatus.ContextFinished if first else GenerateStatus.Generating)
            self.counters[request.lora or BASE]["completion_tokens"] += 1
            self.last_tokens[request.row] = token
            if reason is not None:
                self._free(request.row, reason)

    def _run(self, ids, mask, positions, slots, rows, row_slots, base_graph=False) -> np.ndarray:
        """One forward pass; ``base_graph``: on ``base_step`` (only for rows without adapters)."""
        with EXECUTION_LOCK:  # eager writes of the pool's Parameters
            self.pool.apply(not base_graph)  # what a graph compiled now includes (see AdapterPool.apply)
            if not base_graph:  # the base graphs do not read the row slots
                self.pool.bind_rows(row_slots)
        # the compiled step runs beside other models' steps (only this scheduler thread runs this model's)
        step = self.base_step if base_graph else self.step
        logits = step.run(Tensor(ids, ms.int32), Tensor(mask, ms.int32), Tensor(positions, ms.int32),
                          Tensor(slots, ms.int32), None if rows is None else Tensor(rows, ms.int32))
        return logits.asnumpy()

    def _prefill(self, request: _Request) -> None:
        n, row = len(request.ids), request.row
        bucket = _power_of_two(n, MIN_PROMPT_BUCKET)
        ids = np.full((1, bucket), self.defaults.pad_token_id, np.int64)
        ids[0, bucket - n:] = request.ids
        slots = np.full((1, bucket), self.trash_slot, np.int32)
        slots[0, bucket - n:] = np.arange(n)
        positions = np.zeros((1, bucket), np.int32)
        positions[0, bucket - n:] = np.arange(n)
        self.slot_mask[row] = 0
        self.slot_mask[row, :n] = 1
        self.lengths[row] = n
        lora_slot = self.pool.slots[request.lora] if request.lora is not None else -1
        logits = self._run(ids, self.slot_mask[row:row + 1], positions, slots, np.array([row]), [lora_slot])
        token, reason = request.choose(logits[0])
        self._deliver(request, token, reason, first=True)

    def _decode(self) -> None:
        """One token for every running row. Rows are the cache rows in order when the batch bucket is the
        whole cache (no copy of the cache); a smaller bucket picks its rows out of the cache, ordered by
        adapter so each adapter's rows are one slice."""
        max_batch = self.config.max_batch
        with self.cond:
            requests = list(self.running.values())
        size = min(_power_of_two(len(requests)), max_batch)
        if size == max_batch:
            order = list(range(max_batch))
            by_row = {r.row: r for r in requests}
            batch = [by_row.get(row) for row in order]
            rows = None
        else:
            batch = sorted(requests, key=lambda r: self.pool.slots[r.lora] if r.lora is not None else -1)
            spare = [row for row in range(max_batch) if row not in {r.row for r in batch}]
            order = [r.row for r in batch] + spare[:size - len(batch)]
            batch += [None] * (size - len(batch))
            rows = np.array(order, np.int32)
        slots = np.full((size, 1), self.trash_slot, np.int32)
        positions = np.zeros((size, 1), np.int32)
        for i, request in enumerate(batch):
            if request is not None:
                row = request.row
                slots[i, 0] = positions[i, 0] = self.lengths[row]
                self.slot_mask[row, self.lengths[row]] = 1
                self.lengths[row] += 1
        mask = self.slot_mask[order]
        mask[[i for i, r in enumerate(batch) if r is None]] = 0  # idle rows attend nothing
        ids = self.last_tokens[order].reshape(size, 1)
        row_slots = [self.pool.slots[r.lora] if r is not None and r.lora is not None else -1 for r in batch]
        logits = self._run(ids, mask, positions, slots, rows, row_slots, base_graph=max(row_slots) < 0)
        for i, request in enumerate(batch):
            if request is not None:
                token, reason = request.choose(logits[i])
                self._deliver(request, token, reason, first=False)

    def warmup(self) -> None:
        """Compile every prefill and decode graph now (base rows on idle cache rows), so no request waits for
        a compilation later: prefills with the adapter kernel, decodes with and without it."""
        bucket = MIN_PROMPT_BUCKET
        while True:  # prompts of 1 .. max_length - 1 tokens
            self._run(np.zeros((1, bucket), np.int64), np.zeros((1, self.cache_len), np.int32),
                      np.zeros((1, bucket), np.int32), np.full((1, bucket), self.trash_slot, np.int32),
                      np.array([0]), [-1])
            if bucket >= self.config.max_length - 1:
                break
            bucket *= 2
        size = 1
        while True:
            full = size >= self.config.max_batch
            size = min(size, self.config.max_batch)
            for base_graph in (False, True):
                self._run(np.zeros((size, 1), np.int64), np.zeros((size, self.cache_len), np.int32),
                          np.zeros((size, 1), np.int32), np.full((size, 1), self.trash_slot, np.int32),
                          None if full else np.arange(size, dtype=np.int32), [-1] * size, base_graph)
            if full:
                break
            size *= 2

    def metrics(self) -> Dict[str, Any]:
        with self.cond:
            out: Dict[str, Any] = {"running": len(self.running), "waiting": len(self.waiting)}
            names = [BASE] + sorted(self.pool.slots)
            keys = ("requests", "finished", "interrupted", "prompt_tokens", "completion_tokens")
            out["adapters"] = {n: {k: int(self.counters[n][k]) for k in keys} for n in names + sorted(set(self.counters) - set(names))}
            return out


class Engine:
    """Serves installed models to many concurrent requests, each with its own LoRA adapter (or none).

    See the module docstring for how a step runs and ``status.py`` for the status codes.
    """

    def __init__(self):
        self._models: Dict[str, _ServedModel] = {}
        self._handles = itertools.count(1)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ models
    def _served(self, model_name: str) -> _ServedModel:
        served = self._models.get(model_name)
        if served is None:
            raise ServingError(StatusCode.UNKNOWN_MODEL, f"no model called {model_name!r} is installed; installed: "
                                                          f"{sorted(self._models)}")
        return served

    def install_model(self, config: RuntimeConfig) -> None:
        """Load the model's weights and tokenizer and allocate its KV cache and adapter pool."""
        if not isinstance(config, RuntimeConfig):
            raise ServingError(StatusCode.INVALID_REQUEST, f"install_model takes a RuntimeConfig (from "
                                                            f"RuntimeConfigBuilder(...).build()), not {type(config).__name__}")
        with self._lock:
            if config.model_name in self._models:
                raise ServingError(StatusCode.CONFLICT, f"a model called {config.model_name!r} is already installed")
        served = _ServedModel(config)
        with self._lock:
            self._models[config.model_name] = served

    def start_model(self, model_name: str) -> None:
        """Compile the model's graphs (unless ``warmup`` is off) and start the scheduler thread; requests are
        accepted from then on."""
        self._served(model_name).start()

    def stop_model(self, model_name: str) -> None:
        """Stop the scheduler; running and waiting requests end as interrupted (their tokens kept)."""
        self._served(model_name).stop()

    def uninstall_model(self, model_name: str) -> None:
        """Stop the model and free its memory."""
        self.stop_model(model_name)
        with self._lock:
            del self._models[model_name]

    def model_names(self) -> List[str]:
        return sorted(self._models)

    def is_running(self, model_name: str) -> bool:
        """Whether the model is installed and its scheduler accepts requests."""
        served = self._models.get(model_name)
        if served is None:
            return False
        with served.cond:
            return served.thread is not None and not served.stopping

    def runtime_config(self, model_name: str) -> RuntimeConfig:
        return self._served(model_name).config

    def tokenizer(self, model_name: str):
        return self._served(model_name).tokenizer

    # ------------------------------------------------------------------ adapters
    def load_lora(self, model_name: str, lora_name: str, path: str) -> None:
        """Load the LoRA adapter saved (PEFT or SWIFT files) in directory ``path`` as ``lora_name``."""
        served = self._served(model_name)
        if not isinstance(lora_name, str) or not lora_name or lora_name in (BASE, model_name):
            raise ServingError(StatusCode.INVALID_REQUEST, f"adapter name {lora_name!r} is not allowed: use a "
                                                            f"non-empty name other than {BASE!r} and {model_name!r}")
        with served.cond:  # slots are taken under the scheduler's lock; running rows never use a free slot
            served.pool.load(lora_name, path)
        logger.info("adapter %s loaded from %s in %.2f s", lora_name, path, served.pool.info[lora_name]["load_seconds"])

    def unload_lora(self, model_name: str, lora_name: str) -> None:
        """Free adapter ``lora_name``'s slot; refused while requests use it."""
        served = self._served(model_name)
        with served.cond:
            if lora_name not in served.pool.slots:
                raise ServingError(StatusCode.UNKNOWN_ADAPTER, f"no adapter called {lora_name!r} is loaded; loaded: "
                                                                f"{sorted(served.pool.slots)}")
            users = served.in_use(lora_name)
            if users:
                raise ServingError(StatusCode.CONFLICT, f"adapter {lora_name!r} is used by {users} running or waiting "
                                                        f"request(s); unload it when they have finished")
            served.pool.unload(lora_name)

    def loras(self, model_name: str) -> Dict[str, dict]:
        """Loaded adapters: name -> {path, rank, slot, modules, weight_bytes, slot_bytes, load_seconds}."""
        served = self._served(model_name)
        with served.cond:
            return {name: dict(info) for name, info in served.pool.info.items()}

    # ------------------------------------------------------------------ requests
    def start_request_text(self, model_name: str, text: str, gen_cfg: Optional[Dict[str, Any]] = None):
        """Tokenize ``text`` and start a request; returns ``(status, handle, queue)`` (handle and queue are
        None when the status is not ok)."""
        try:
            served = self._served(model_name)
            if served.tokenizer is None:
                raise ServingError(StatusCode.INVALID_REQUEST, f"model {model_name!r} has no tokenizer; send token ids")
            if not isinstance(text, str):
                raise ServingError(StatusCode.INVALID_REQUEST, f"text must be a string, found {type(text).__name__}")
            ids = served.tokenizer.encode_prompts([text])[0]
        except ServingError as err:
            return err.status, None, None
        return self.start_request_ids(model_name, ids, gen_cfg)

    def start_request_ids(self, model_name: str, ids: Sequence[int], gen_cfg: Optional[Dict[str, Any]] = None):
        """Start a request on prompt token ids; returns ``(status, handle, queue)``.

        Args:
            gen_cfg: generation settings named as in ``generate()`` (``max_new_tokens``, ``max_length``,
                ``min_new_tokens``, ``do_sample``, ``top_k``, ``top_p``, ``temperature``,
                ``repetition_penalty``, ``eos_token_id``, ``stop_strings``, ``seed``) and ``lora_name`` (None:
                the base model). ``stop_strings`` end the request ("stop") once its generated text contains
                one, as in ``generate``; the tokens up to the one completing it are returned.
        """
        try:
            served = self._served(model_name)
            ids = self._check_ids(ids, served.vocab)
            config, lora = served.settings(gen_cfg)
            limit = served.limit(config, len(ids))
        except ServingError as err:
            return err.status, None, None
        request = _Request(next(self._handles), ids, config, lora, limit, served.vocab, served.tokenizer)
        status = served.submit(request)
        if not status:
            return status, None, None
        return status, request.handle, request.queue

    @staticmethod
    def _check_ids(ids: Any, vocab: int) -> List[int]:
        if isinstance(ids, np.ndarray):
            ids = ids.reshape(-1).tolist()
        if not isinstance(ids, (list, tuple)) or not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool)
                                                         for i in ids):
            raise ServingError(StatusCode.INVALID_REQUEST, "prompt ids must be a list of integers")
        if not ids:
            raise ServingError(StatusCode.INVALID_REQUEST, "the prompt is empty; send at least one token")
        bad = [int(i) for i in ids if not 0 <= i < vocab]
        if bad:
            raise ServingError(StatusCode.INVALID_REQUEST, f"token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
        return [int(i) for i in ids]

    def sync_request(self, model_name: str, prompt: Union[str, Sequence[int]], gen_cfg: Optional[Dict[str, Any]] = None):
        """Run a request to its end; returns ``(status, new token ids)`` (None when refused)."""
        start = self.start_request_text if isinstance(prompt, str) else self.start_request_ids
        status, handle, queue = start(model_name, prompt, gen_cfg)
        if not status:
            return status, None
        try:
            while queue.Get() is not None:
                pass
        finally:
            self.release_request(model_name, handle)
        return status, list(queue.output_ids)

    def release_request(self, model_name: str, handle: int) -> Status:
        """Forget a request; one still running is interrupted (its tokens so far stay in its queue)."""
        try:
            return self._served(model_name).release(handle)
        except ServingError as err:
            return err.status

    def metrics(self, model_name: str) -> Dict[str, Any]:
        """{running, waiting, adapters: {name: {requests, finished, interrupted, prompt_tokens,
        completion_tokens}}}; ``base`` counts requests without an adapter."""
        return self._served(model_name).metrics()
