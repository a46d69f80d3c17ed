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

With ``RuntimeConfig.scaled_adapters``, DoRA and IA3 adapters are served too, in the same slots and batches
as LoRA ones (per-row scales around the low-rank kernel, ``lora.py``); without it they are refused.

Adapters beyond the pool (S-LoRA / LoRAX style): the engine knows every registered or loaded adapter and
keeps ``lora_max_num`` of them resident in pool slots. A request for a known adapter is never refused for a
full pool; it waits in the queue while its adapter is brought in:

- reading: the loader thread reads the adapter's files into host memory (``AdapterPool.prepare``: disk,
  checks, numpy), while the scheduler goes on decoding. Reads start in queue order, at most
  ``lora_max_num`` at a time (held host copies stay within one pool's size). Nothing is cached after an
  eviction: a later request reads the files again (the OS page cache keeps them warm).
- writing: between two steps the scheduler writes a read adapter into a slot (``AdapterPool.install``,
  under ``EXECUTION_LOCK``, no recompilation). Slots go to adapters in the order of their oldest waiting
  request: a free slot; else the least recently used adapter that no running or waiting request uses
  (evicted); else the least recently used adapter that no request queued *before* it needs is reserved:
  requests queued after it for that adapter are held, and it is evicted when its running rows end. If
  every resident adapter serves requests queued before it, it waits for them.
- admission: in queue order, skipping requests whose adapter is not resident or is reserved. So base and
  resident-adapter requests never wait behind one whose adapter is loading, and a request waiting for a
  slot waits for the requests queued before it and the running rows of its victim, never for later
  requests (they cannot keep its victim busy).

"Used" (for the least recently used order) means: loaded, or a request for it arrived or ended.
``Engine.metrics`` counts per adapter hits (resident when the request arrived and until it ran), misses,
evictions, loads and load time; ``load_lora`` takes a slot at once (evicting an idle adapter), and
``register_lora`` only checks the files.

Shapes: the KV cache is ``[max_batch, kv_heads, max_length + 1, head_dim]`` per layer (the extra slot
takes the prompt padding's keys, always masked). A request's prompt is left-padded to a power of two
(one prefill graph per bucket) and its real tokens go to slots ``0..n-1`` of its row; a decode step runs
on the running rows padded to a power of two (one graph per bucket, rows picked by ``cache_rows``).
"""
import collections
import concurrent.futures
import gc
import itertools
import os
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

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
from .lora import AdapterPool, PreparedAdapter, attach_pool
from .status import GenerateStatus, ServingError, Status, StatusCode

MIN_PROMPT_BUCKET = 16
DECODE_LOG = 4096  # decode steps kept for Engine.decode_steps
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
        self.missed = False  # its adapter was not resident when it arrived, or was evicted before it ran

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
                                                 config.lora_max_rank, config.max_batch, config.lora_kernel,
                                                 config.scaled_adapters, config.lora_dtype)
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
        # the last DECODE_LOG decode steps: (rows decoded, rows with an adapter, seconds), and all steps' totals
        self.decode_log: collections.deque = collections.deque(maxlen=DECODE_LOG)
        self.decode_totals = collections.Counter()
        # the adapter cache (module docstring): every known adapter, resident in a slot or not
        self.adapters: Dict[str, dict] = {}  # name -> {path, rank, modules, weight_bytes, slot_bytes[, load_seconds]}
        self.recency: Dict[str, int] = {}  # name -> tick of its last use; the smallest resident one is the LRU
        self.ticks = itertools.count()
        self.loads: Dict[str, concurrent.futures.Future] = {}  # name -> read (PreparedAdapter) for waiting requests
        self.victims: Dict[str, str] = {}  # adapter waiting for a slot -> resident adapter it will evict
        self.loader: Optional[concurrent.futures.ThreadPoolExecutor] = None
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
        if lora is not None and lora not in self.adapters:
            raise ServingError(StatusCode.UNKNOWN_ADAPTER, f"no adapter called {lora!r} is loaded or registered; "
                                                            f"known: {sorted(self.adapters)}")
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
            if request.lora is not None and request.lora not in self.adapters:  # unloaded meanwhile
                return Status(StatusCode.UNKNOWN_ADAPTER, f"no adapter called {request.lora!r} is loaded or "
                                                          f"registered (unloaded meanwhile)")
            free_rows = self.config.max_batch - len(self.running)
            if len(self.waiting) >= self.config.max_queue + free_rows:
                return Status(StatusCode.QUEUE_FULL, f"{len(self.waiting)} requests are waiting (max_queue="
                                                     f"{self.config.max_queue}); retry later")
            self.waiting.append(request)
            self.requests[request.handle] = request
            counter = self.counters[request.lora or BASE]
            counter["requests"] += 1
            counter["prompt_tokens"] += len(request.ids)
            if request.lora is not None:
                request.missed = request.lora not in self.pool.slots
                self.touch(request.lora)
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
        if request.lora in self.recency:
            self.touch(request.lora)

    def touch(self, lora: str) -> None:
        """Mark ``lora`` as just used (the eviction order is least recently used first)."""
        self.recency[lora] = next(self.ticks)

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
            # one thread reads adapter files for waiting requests while the scheduler keeps decoding
            self.loader = concurrent.futures.ThreadPoolExecutor(1, f"lora-loader-{self.config.model_name}")
            self.thread = threading.Thread(target=self._loop, name=f"serving-{self.config.model_name}", daemon=True)
            self.thread.start()

    def stop(self) -> None:
        with self.cond:
            thread, self.stopping = self.thread, True
            self.cond.notify_all()
        if thread is not None:
            thread.join()
        with self.cond:
            self.thread, loader, self.loader = None, self.loader, None
            self.loads.clear()
            self.victims.clear()
        if loader is not None:
            loader.shutdown(wait=True)  # a read under way ends on its own; its result is dropped

    def _loop(self) -> None:
        try:
            while True:
                with self.cond:
                    admitted = self._next_admissions()
                    if admitted is None:
                        break
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

    def _next_admissions(self) -> Optional[List[_Request]]:
        """Under ``cond``: the waiting requests to prefill now, after freeing released rows and loading
        adapters; waits while there is nothing to run. None once the model is stopping."""
        while True:
            if self.stopping:
                return None
            for row, request in list(self.running.items()):
                if request.released:
                    self._free(row, "interrupted")
            held = self._schedule_adapters()
            admitted = []
            # Queue order, skipping requests whose adapter is not resident (or is to be evicted for an older
            # request's adapter): they never hold back the requests behind them.
            for request in list(self.waiting):
                if len(self.running) + len(admitted) >= self.config.max_batch:
                    break
                if request.lora is None or (request.lora in self.pool.slots and request.lora not in held):
                    self.waiting.remove(request)
                    admitted.append(request)
                    if request.lora is not None:
                        self.counters[request.lora]["misses" if request.missed else "hits"] += 1
            if admitted or self.running:
                return admitted
            self.cond.wait()  # woken by submit, release, a finished read, unload and stop

    # ------------------------------------------------------------------ the adapter cache
    def _schedule_adapters(self) -> Set[str]:
        """Under ``cond``, between steps: start reading the adapters waiting requests need and write those
        read into a slot (free, or evicted); returns the resident adapters whose waiting requests are held
        (each is reserved for an adapter queued before them and is evicted once its running rows end).

        Slots go to adapters in the order of their oldest waiting request. For each: a free slot, else the
        least recently used adapter no running or waiting request uses, else the least recently used one
        no request queued before that request needs, reserved (see the module docstring).
        """
        running = {r.lora for r in self.running.values()}
        waiting = {r.lora for r in self.waiting}
        self._drop_loads(waiting)
        previous, self.victims = self.victims, {}
        ahead: Set[str] = set()  # resident adapters of requests queued before the one looked at
        taken: Set[str] = set()  # adapters reserved in this pass
        seen: Set[str] = set()
        for request in list(self.waiting):
            name = request.lora
            if name is None or request not in self.waiting:  # base, or ended by a failed read below
                continue
            if name in self.pool.slots:
                ahead.add(name)
                continue
            if name in seen:
                continue
            seen.add(name)
            future = self.loads.get(name)
            if future is None:
                if len(self.loads) >= self.config.lora_max_num:  # host copies: at most a pool's worth
                    continue
                future = self._start_read(name)
            # WARNING: a read that is done already must be taken now: its wake-up call may have come before
            # the scheduler waits (a read ending later wakes it: the callback waits for ``cond``)
            if not future.done():
                continue
            prepared = self._read_result(name, future)
            if prepared is None:
                continue
            slot = self._slot_for(name, running, waiting, ahead, taken, previous.get(name))
            if slot is not None:
                del self.loads[name]
                self._install(name, prepared, slot)
        return set(self.victims.values())

    def _slot_for(self, name: str, running: Set[str], waiting: Set[str], ahead: Set[str], taken: Set[str],
                  previous: Optional[str]) -> Optional[int]:
        """A slot for adapter ``name`` now (evicting if need be), or None after reserving a victim whose
        running rows must end first."""
        free = self.pool.free_slots()
        if free:
            return free[0]
        idle = [n for n in self.pool.slots if n not in running and n not in waiting]
        if idle:
            return self._evict(min(idle, key=self.recency.__getitem__))
        candidates = [n for n in self.pool.slots if n not in ahead and n not in taken]
        if not candidates:  # every resident adapter serves requests queued before this one: they go first
            return None
        victim = previous if previous in candidates else min(candidates, key=self.recency.__getitem__)
        taken.add(victim)
        if victim in running:
            self.victims[name] = victim
            return None
        return self._evict(victim)  # only requests queued after ``name``'s wait for it: they load it again

    def _start_read(self, name: str) -> concurrent.futures.Future:
        future = self.loader.submit(self.pool.prepare, self.adapters[name]["path"])
        future.add_done_callback(lambda _: self._wake())  # runs here at once if the read is done already
        self.loads[name] = future
        return future

    def _wake(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def _read_result(self, name: str, future: concurrent.futures.Future) -> Optional[PreparedAdapter]:
        """The read adapter; None if reading failed (its files changed since they were registered): its
        waiting requests then end as interrupted and the next request for it reads again."""
        try:
            return future.result()
        except Exception as err:  # pylint: disable=broad-except  # a bad file must not stop the scheduler
            del self.loads[name]
            message = err.message if isinstance(err, ServingError) else repr(err)
            logger.error("adapter %s could not be read from %s (%s); interrupting its %d waiting request(s)",
                         name, self.adapters[name]["path"], message, sum(r.lora == name for r in self.waiting))
            for request in [r for r in self.waiting if r.lora == name]:
                self.waiting.remove(request)
                self._end(request, "interrupted")
            return None

    def _drop_loads(self, waiting: Set[str]) -> None:
        """Forget finished reads no waiting request needs any more (released, or loaded meanwhile)."""
        for name, future in list(self.loads.items()):
            if future.done() and (name not in waiting or name in self.pool.slots):
                del self.loads[name]

    def _evict(self, name: str) -> int:
        """Take ``name``'s slot (no running row uses it); its waiting requests will need it loaded again."""
        self.counters[name]["evictions"] += 1
        for request in self.waiting:
            if request.lora == name:
                request.missed = True
        return self.pool.evict(name)

    def _install(self, name: str, prepared: PreparedAdapter, slot: int) -> None:
        """Write a read adapter into ``slot`` and count the load (read and write time)."""
        seconds = prepared.read_seconds + self.pool.install(name, prepared, slot)
        self.adapters[name]["load_seconds"] = seconds
        counter = self.counters[name]
        counter["loads"] += 1
        counter["load_seconds"] += seconds
        counter["load_seconds_max"] = max(counter["load_seconds_max"], seconds)
        self.touch(name)

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
        # other models' steps take turns with this one on EXECUTION_LOCK (only this scheduler thread runs this model's)
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
        start = time.perf_counter()
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
        seconds = time.perf_counter() - start
        with self.cond:
            self.decode_log.append((len(requests), sum(r.lora is not None for r in requests), seconds))
            self.decode_totals.update(steps=1, tokens=len(requests), seconds=seconds)

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
            names = [BASE] + sorted(self.adapters)
            keys = ("requests", "finished", "interrupted", "prompt_tokens", "completion_tokens")
            out["adapters"] = {n: {k: int(self.counters[n][k]) for k in keys} for n in names + sorted(set(self.counters) - set(names))}
            for name, entry in out["adapters"].items():
                if name != BASE:
                    counter = self.counters[name]
                    entry.update({k: int(counter[k]) for k in ("hits", "misses", "evictions", "loads")},
                                 load_seconds=float(counter["load_seconds"]),
                                 load_seconds_max=float(counter["load_seconds_max"]))
            out["pool"] = {"slots": self.config.lora_max_num, "resident": len(self.pool.slots),
                           "known": len(self.adapters), "loading": len(self.loads)}
            out["decode"] = {"steps": int(self.decode_totals["steps"]), "tokens": int(self.decode_totals["tokens"]),
                             "seconds": float(self.decode_totals["seconds"])}
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
        # The decode steps sit in reference cycles (a Cell holds its own jit-compiled method), so only the
        # cycle collector frees them and, through their finalizers, their compiled graphs. Collect now: left
        # until interpreter exit, MindSpore 2.10 freed the graphs after Python had finalized and aborted
        # ("PyThreadState_Get: ... the GIL is released", seen at the exit of bench/serve.py --lru).
        gc.collect()

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
    @staticmethod
    def _check_adapter_name(model_name: str, lora_name: str) -> None:
        if not isinstance(lora_name, str) or not lora_name or lora_name in (BASE, model_name):
            raise ServingError(StatusCode.INVALID_REQUEST, f"adapter name {lora_name!r} is not allowed: use a "
                                                            f"non-empty name other than {BASE!r} and {model_name!r}")

    @staticmethod
    def _check_path(served: _ServedModel, lora_name: str, path: str) -> bool:
        """Under ``served.cond``: whether ``lora_name`` is known from ``path`` already (False: not known);
        CONFLICT when it is known from another directory."""
        record = served.adapters.get(lora_name)
        if record is None:
            return False
        if record["path"] != os.path.abspath(path):
            raise ServingError(StatusCode.CONFLICT, f"an adapter called {lora_name!r} is already known from "
                                                    f"{record['path']}, not {os.path.abspath(path)}; unload it "
                                                    f"first or pick another name")
        return True

    @staticmethod
    def _record(served: _ServedModel, prepared: PreparedAdapter) -> dict:
        return {"path": prepared.path, "kind": prepared.kind, "rank": prepared.rank, "modules": prepared.modules,
                "weight_bytes": prepared.weight_bytes, "slot_bytes": served.pool.slot_bytes}

    def register_lora(self, model_name: str, lora_name: str, path: str) -> None:
        """Make the adapter saved (PEFT or SWIFT files: LoRA; DoRA and IA3 with ``scaled_adapters``) in
        directory ``path`` known as ``lora_name``
        without taking a slot: its files are read and checked now, and it is loaded when a request needs it.

        Registering a name again from the same directory does nothing; from another one is a CONFLICT.
        """
        served = self._served(model_name)
        self._check_adapter_name(model_name, lora_name)
        with served.cond:
            if self._check_path(served, lora_name, path):
                return
        prepared = served.pool.prepare(path)  # checks the files (INVALID_REQUEST); the factors are dropped
        with served.cond:
            if not self._check_path(served, lora_name, path):  # registered meanwhile by another caller
                served.adapters[lora_name] = self._record(served, prepared)
                served.touch(lora_name)

    def load_lora(self, model_name: str, lora_name: str, path: str) -> None:
        """Register the adapter in directory ``path`` as ``lora_name`` (see :meth:`register_lora`) and write
        it into a slot now. A full pool evicts its least recently used adapter that no running or waiting
        request uses; CONFLICT when every slot is used by requests, or when ``lora_name`` is loaded already.
        """
        served = self._served(model_name)
        self._check_adapter_name(model_name, lora_name)

        def check():
            if lora_name in served.pool.slots:
                raise ServingError(StatusCode.CONFLICT, f"an adapter called {lora_name!r} is already loaded; "
                                                        f"unload it first or pick another name")
            self._check_path(served, lora_name, path)

        with served.cond:
            check()
        prepared = served.pool.prepare(path)  # the slow part, outside the lock: steps go on meanwhile
        with served.cond:  # slots are taken under the scheduler's lock; running rows never use a free slot
            check()
            slot = self._idle_slot(served)
            served.adapters[lora_name] = self._record(served, prepared)
            served._install(lora_name, prepared, slot)  # pylint: disable=protected-access
        logger.info("adapter %s loaded from %s in %.2f s", lora_name, path, served.adapters[lora_name]["load_seconds"])

    @staticmethod
    def _idle_slot(served: _ServedModel) -> int:
        """Under ``served.cond``: a free slot, or the slot of the least recently used adapter no running or
        waiting request uses (evicted); CONFLICT if there is none."""
        free = served.pool.free_slots()
        if free:
            return free[0]
        used = {r.lora for r in itertools.chain(served.waiting, served.running.values())}
        idle = [n for n in served.pool.slots if n not in used]
        if not idle:
            raise ServingError(StatusCode.CONFLICT, f"every slot of the adapter pool (lora_max_num="
                                                    f"{served.config.lora_max_num}) holds an adapter that running "
                                                    f"or waiting requests use; retry when they have finished, or "
                                                    f"register the adapter (it is then loaded on demand)")
        return served._evict(min(idle, key=served.recency.__getitem__))  # pylint: disable=protected-access

    def unload_lora(self, model_name: str, lora_name: str) -> None:
        """Forget adapter ``lora_name`` (resident or not), freeing its slot; refused while requests use it."""
        served = self._served(model_name)
        with served.cond:
            if lora_name not in served.adapters:
                raise ServingError(StatusCode.UNKNOWN_ADAPTER, f"no adapter called {lora_name!r} is loaded or "
                                                                f"registered; known: {sorted(served.adapters)}")
            users = served.in_use(lora_name)
            if users:
                raise ServingError(StatusCode.CONFLICT, f"adapter {lora_name!r} is used by {users} running or waiting "
                                                        f"request(s); unload it when they have finished")
            if lora_name in served.pool.slots:
                served.pool.unload(lora_name)
            del served.adapters[lora_name]
            served.recency.pop(lora_name, None)
            served.loads.pop(lora_name, None)  # a read under way finishes unseen
            served.cond.notify_all()  # a freed slot may let a waiting adapter in

    def loras(self, model_name: str) -> Dict[str, dict]:
        """Known adapters: name -> {path, kind (LORA, DORA or IA3), rank (0 for IA3), loaded (resident in a slot), slot (None when not resident),
        modules, weight_bytes, slot_bytes, load_seconds (of the last load; absent before the first)}."""
        served = self._served(model_name)
        with served.cond:
            return {name: {**record, "loaded": name in served.pool.slots, "slot": served.pool.slots.get(name)}
                    for name, record in served.adapters.items()}

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
        if not isinstance(ids, (list, tuple)):
            raise ServingError(StatusCode.INVALID_REQUEST, f"prompt ids must be a list of integers, found "
                                                            f"{type(ids).__name__} {str(ids)[:50]!r}")
        wrong = [i for i in ids if not isinstance(i, (int, np.integer)) or isinstance(i, bool)]
        if wrong:
            raise ServingError(StatusCode.INVALID_REQUEST, f"prompt ids must be integers, found "
                                                            f"{type(wrong[0]).__name__} {wrong[0]!r}"
                                                            + (f" and {len(wrong) - 1} more" if len(wrong) > 1 else ""))
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

    def decode_steps(self, model_name: str) -> List[Tuple[int, int, float]]:
        """The model's last decode steps (up to 4,096), oldest first: (rows decoded, rows with an adapter,
        seconds). A step's time per token is seconds / rows; steps with every row running give the engine's
        decode throughput without the admissions around them (``bench/serve.py`` reads it)."""
        served = self._served(model_name)
        with served.cond:
            return list(served.decode_log)

    def release_request(self, model_name: str, handle: int) -> Status:
        """Forget a request; one still running is interrupted (its tokens so far stay in its queue)."""
        try:
            return self._served(model_name).release(handle)
        except ServingError as err:
            return err.status

    def metrics(self, model_name: str) -> Dict[str, Any]:
        """{running, waiting, adapters: {name: {requests, finished, interrupted, prompt_tokens,
        completion_tokens, and for adapters: hits, misses, evictions, loads, load_seconds, load_seconds_max}},
        pool: {slots, resident, known, loading}, decode: {steps, tokens, seconds}}; ``base`` counts requests
        without an adapter; ``decode`` sums every decode step (one token for each running row, its sampling
        and delivery included; prefills not).

        A request counts as a hit or a miss when it gets its row: a hit if its adapter was resident when it
        arrived and stayed so, a miss if it had to be loaded. ``load_seconds`` sums every load (read and
        write, on demand or by ``load_lora``); ``loading``: reads under way or waiting for a slot."""
        return self._served(model_name).metrics()
