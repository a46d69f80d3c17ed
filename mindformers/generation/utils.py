"""``generate()`` for causal language models: greedy, sampling and beam search over a static KV cache.

Design:
- Prompts of different lengths are left-padded; positions count real tokens only, so every row gives the
  ids it would give alone.
- The KV cache (:class:`~mindformers.models.common.attention.KVCache`) is preallocated for
  ``batch x max_len`` and written in place; prompt and cache lengths are rounded up to buckets so a few
  compiled graphs (one prefill per bucket, one decode step) serve every call.
- The forward pass is compiled with ``mindspore.jit`` by default (``model.generation_mode = "pynative"``
  runs it eagerly); token choice happens in numpy on the host (see ``logits_process.py``).
- Beam search follows transformers' vectorised implementation (same candidates, length penalty and
  early-stopping rules), so it returns the same sequences on the same weights.
"""
import threading
import weakref
from collections import OrderedDict
from typing import Any, List, Optional

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from ..models.common.attention import KVCache
from ..utils import EXECUTION_LOCK, graph_run, graphs_compiled, release_graphs
from .config import GenerationConfig
from .decoding import DecodingState
from .logits_process import LogitsProcessor, log_softmax

PROMPT_BUCKET = 32  # prompts are left-padded to a multiple of this (one prefill graph per bucket)
CACHE_BUCKET = 128  # cache lengths are rounded up to a multiple of this
GENERATION_MODES = ("jit", "pynative")
KEPT_DECODE_STEPS = 3  # caches (with their compiled graphs) kept per model, one per batch size
_STEPS_LOCK = threading.Lock()  # guards every model's kept steps


# ------------------------------------------------------------------------------------------ inputs
def _rows(input_ids: Any, attention_mask: Any) -> List[List[int]]:
    """The real (unpadded) token ids of each prompt."""
    if isinstance(input_ids, Tensor):
        input_ids = input_ids.asnumpy()
    if isinstance(attention_mask, Tensor):
        attention_mask = attention_mask.asnumpy()
    if isinstance(input_ids, np.ndarray):
        ids = np.atleast_2d(input_ids)
        mask = np.ones_like(ids) if attention_mask is None else np.atleast_2d(np.asarray(attention_mask))
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask shape {mask.shape} does not match input_ids shape {ids.shape}")
        rows = [[int(t) for t, m in zip(r, mr) if m] for r, mr in zip(ids, mask)]
    elif isinstance(input_ids, (list, tuple)):
        if input_ids and isinstance(input_ids[0], (int, np.integer)):
            input_ids = [input_ids]
        if attention_mask is not None:
            raise ValueError("attention_mask is only accepted with an array or Tensor of input_ids; "
                             "pass lists of different lengths without padding instead")
        rows = [[int(t) for t in r] for r in input_ids]
    else:
        raise TypeError(f"input_ids must be a list of ids, a list of lists, a numpy array or a Tensor; "
                        f"found {type(input_ids).__name__}")
    if not rows:
        raise ValueError("input_ids holds no prompt")
    for i, row in enumerate(rows):
        if not row:
            raise ValueError(f"prompt {i} is empty; generation needs at least one token (e.g. the BOS token)")
    return rows


def _bucket(n: int, size: int) -> int:
    return -(-n // size) * size


def generation_settings(model, generation_config: Optional[GenerationConfig], kwargs) -> GenerationConfig:
    """The settings of a run: ``generation_config`` (default the model's ``generation_config.json``, else its
    config's token ids) updated with ``kwargs``, with the end-of-sequence and padding ids filled in from the
    model config (padding: the model's pad, else the first eos, else 0).

    Args:
        model: the causal LM (its ``generation_config`` and ``config``).
        generation_config: the base settings, or None.
        kwargs: :class:`GenerationConfig` fields to override; unknown names are a ``ValueError``.
    Returns:
        The settings.
    """
    base = generation_config or model.generation_config or GenerationConfig.from_model_config(model.config)
    config = base.update(**kwargs)
    if config.eos_token_id is None:
        config = config.update(eos_token_id=model.config.eos_token_id)
    if config.pad_token_id is None:
        pad = model.config.pad_token_id
        if pad is None:
            pad = config.eos_token_ids[0] if config.eos_token_ids else 0
        config = config.update(pad_token_id=pad)
    if config.num_beams == 1 and not config.do_sample and config.num_return_sequences > 1:
        raise ValueError("greedy decoding returns one sequence per prompt; set do_sample=True or num_beams > 1 "
                         "for num_return_sequences > 1")
    return config


def prompt_adapter_positions(model) -> int:
    """Positions an active prompt adapter takes before every prompt (virtual tokens, prefix positions)."""
    return getattr(model, "virtual_tokens", 0) + getattr(model, "prefix_positions", 0)


def length_limit(config: GenerationConfig, prompt_len: int, context: int, prompted: int = 0,
                 cap: Optional[int] = None) -> int:
    """The total length (prompt + new tokens) a sequence may reach: ``max_new_tokens`` after the prompt, else
    ``max_length``, within the model's context less a prompt adapter's positions and within ``cap``.

    Args:
        config: the generation settings.
        prompt_len: tokens of the (longest) prompt.
        context: the model's context (``max_position_embeddings``).
        prompted: positions a prompt adapter takes before the prompt (:func:`prompt_adapter_positions`).
        cap: the caller's own limit on the total length (the serving engine's ``max_length``); None: the
            context alone.
    Returns:
        The total length, larger than ``prompt_len``.
    Raises:
        ValueError: the prompt leaves no room for a new token, or the requested length does not fit.
    """
    if prompted >= context:
        raise ValueError(f"the active prompt adapter takes {prompted} positions, but the model's context is "
                         f"{context} (max_position_embeddings); use fewer virtual tokens")
    context -= prompted
    if cap is not None and cap < context:
        limit, name, source = cap, "the serving limit", "max_length of the served model"
    else:
        limit, name = context, "the model's context"
        source = f"max_position_embeddings{f' less the {prompted} positions of the prompt adapter' if prompted else ''}"
    if prompt_len >= limit:
        raise ValueError(f"the prompt has {prompt_len} tokens but {name} is {limit} tokens ({source}) and must "
                         "hold at least one new token; shorten the prompt")
    if config.max_new_tokens is not None:
        total = prompt_len + config.max_new_tokens
    else:
        total = config.max_length
        if total <= prompt_len:
            raise ValueError(f"max_length={total} leaves no room for new tokens after a {prompt_len}-token prompt; "
                             f"set max_new_tokens (or a larger max_length)")
    if total > limit:
        raise ValueError(f"prompt ({prompt_len} tokens) + new tokens would reach {total} tokens, beyond {name} of "
                         f"{limit} ({source}); lower max_new_tokens/max_length")
    return total


# ------------------------------------------------------------------------------------------ runners
class DecodeStep(nn.Cell):
    """One forward pass of ``model`` over its KV cache, compiled once per cache.

    The cell owns the cache but only refers to the model: a model assigned as a sub-cell would have its
    parameters renamed with this cell's prefix. A compiled function stays bound to the Parameters it was
    first called with (MindSpore 2.10 fails when the same jit function gets another cache), hence one
    cell, and one jit function, per cache.
    """

    def __init__(self, model, cache: KVCache, mode: str):
        super().__init__()
        object.__setattr__(self, "_model", model)
        self.cache = cache
        self.mode = mode
        self.jit = mode == "jit" or ms.get_context("mode") == ms.GRAPH_MODE  # GRAPH_MODE: compile regardless
        self._step = ms.jit(self.construct) if self.jit else self
        self._shapes: set = set()  # input shapes compiled so far
        self.lock = threading.Lock()  # the cache is this step's: one pass (or generate() call) at a time
        # MindSpore keeps compiled graphs for the life of the process: this step's go when the step goes
        self._graphs: set = set()
        weakref.finalize(self, release_graphs, self._graphs)

    def run(self, input_ids, attention_mask, position_ids, cache_slots, cache_rows=None):
        """The step, compiled on first use (one graph per input shape). Every call holds
        ``EXECUTION_LOCK`` (MindSpore runs one call at a time; see ``mindformers.utils``); the caller holds
        ``lock`` when other threads may use this step."""
        args = (input_ids, attention_mask, position_ids, cache_slots, cache_rows)
        if not self.jit:
            with EXECUTION_LOCK:
                return self._step(*args)
        shapes = tuple(None if a is None else (a.shape, a.dtype) for a in args)
        if shapes in self._shapes:  # the hot path: a compiled graph, nothing new to track
            with graph_run(compiling=False):
                return self._step(*args)
        with graph_run(compiling=True), graphs_compiled(self._graphs):
            out = self._step(*args)
        self._shapes.add(shapes)
        return out

    def construct(self, input_ids, attention_mask, position_ids, cache_slots, cache_rows=None):
        return self._model.decode_logits(input_ids, attention_mask, position_ids, self.cache.tensors, cache_slots,
                                         cache_rows)

    def reorder(self, index: Tensor) -> None:
        """Row r of every cache tensor takes the contents of row ``index[r]`` (beam search)."""
        with EXECUTION_LOCK:
            for param in self.cache.tensors:
                ops.assign(param, ops.gather(param, index, 0))



class _CachedRunner:
    """Prefill and decode steps over a static KV cache (compiled or eager)."""

    def __init__(self, model, rows: int, prompt_len: int, max_len: int):
        self.model = model
        self.virtual = getattr(model, "virtual_tokens", 0)  # a prompt tuner's tokens, written by the prefill
        prompt_len, max_len = prompt_len + self.virtual, max_len + self.virtual
        bucketed_prompt = _bucket(prompt_len, PROMPT_BUCKET)
        self.pad = bucketed_prompt - prompt_len  # extra left padding added for the bucket
        self.step_cell = model._decode_step_for(rows, _bucket(bucketed_prompt + (max_len - prompt_len), CACHE_BUCKET))
        self.cache = self.step_cell.cache
        self.slot_mask = np.zeros((rows, self.cache.max_len), np.int32)
        self.next_slot = 0
        self.positions = np.zeros(rows, np.int32)

    def prefill(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        rows = ids.shape[0]
        if self.virtual:  # the prompt tuner's virtual tokens before each row (see DecoderForCausalLM.virtual_tokens)
            first = self.model.config.vocab_size
            ids = np.concatenate([np.broadcast_to(np.arange(first, first + self.virtual, dtype=ids.dtype),
                                                  (rows, self.virtual)), ids], 1)
            mask = np.concatenate([np.ones((rows, self.virtual), mask.dtype), mask], 1)
        length = ids.shape[1]
        ids = np.concatenate([np.zeros((rows, self.pad), ids.dtype), ids], 1)
        mask = np.concatenate([np.zeros((rows, self.pad), mask.dtype), mask], 1)
        length += self.pad
        self.slot_mask[:, :] = 0
        self.slot_mask[:, :length] = mask
        # a prefix tuner's keys sit before every row: its tokens start at that position
        positions = (np.maximum(np.cumsum(mask, 1) - 1, 0) + getattr(self.model, "prefix_positions", 0)).astype(np.int32)
        slots = np.broadcast_to(np.arange(length, dtype=np.int32), (rows, length))
        self.positions = positions[:, -1]
        self.next_slot = length
        return self._run(ids, positions, slots)

    def step(self, tokens: np.ndarray) -> np.ndarray:
        rows = tokens.shape[0]
        slot = self.next_slot
        self.slot_mask[:, slot] = 1
        self.positions = self.positions + 1
        self.next_slot += 1
        return self._run(tokens.reshape(rows, 1), self.positions.reshape(rows, 1),
                         np.full((rows, 1), slot, np.int32))

    def reorder(self, index: np.ndarray) -> None:
        """Beam search: row r continues from row ``index[r]``."""
        self.step_cell.reorder(Tensor(index.astype(np.int32)))
        self.slot_mask = self.slot_mask[index]
        self.positions = self.positions[index]

    def _run(self, ids, positions, slots) -> np.ndarray:
        logits = self.step_cell.run(Tensor(ids.astype(np.int32)), Tensor(self.slot_mask),
                                    Tensor(positions.astype(np.int32)), Tensor(slots.astype(np.int32)))
        return logits.asnumpy()

    def __enter__(self) -> "_CachedRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.step_cell.lock.release()  # taken by _decode_step_for


class _UncachedRunner:
    """Recomputes the whole sequence at every step (``use_cache=False``): the reference path."""

    def __init__(self, model):
        self.model = model

    def prefill(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        self.ids, self.mask = ids, mask
        return self._run()

    def step(self, tokens: np.ndarray) -> np.ndarray:
        self.ids = np.concatenate([self.ids, tokens.reshape(-1, 1)], 1)
        self.mask = np.concatenate([self.mask, np.ones((len(tokens), 1), self.mask.dtype)], 1)
        return self._run()

    def reorder(self, index: np.ndarray) -> None:
        self.ids, self.mask = self.ids[index], self.mask[index]

    def _run(self) -> np.ndarray:
        with EXECUTION_LOCK:
            logits = self.model(Tensor(self.ids.astype(np.int32)), Tensor(self.mask.astype(np.int32)))
            return logits[:, -1].astype(ms.float32).asnumpy()

    def __enter__(self) -> "_UncachedRunner":
        return self

    def __exit__(self, *exc) -> None:
        pass


# ------------------------------------------------------------------------------------------ mixin
class GenerationMixin:
    """Adds :meth:`generate` to a causal LM.

    The model provides ``decode_logits(input_ids, attention_mask, position_ids, kv_cache, cache_slots)``
    (float32 logits of each row's last position) and ``kv_cache_spec()`` (layers, heads, key dim, value dim).
    """

    generation_mode = "jit"
    generation_config: Optional[GenerationConfig] = None

    # --------------------------------------------------------------- cache and compiled step
    def _decode_step_for(self, rows: int, max_len: int) -> "DecodeStep":
        """A cache of ``rows`` x at least ``max_len`` with its compiled step, its ``lock`` held for the caller
        (who releases it when its generation ends). The last few are kept (one per batch size), so
        alternating batch sizes reuse their compiled graphs; a step another thread's generation holds is not
        shared: this call gets a new one of its own (compiled anew)."""
        if self.generation_mode not in GENERATION_MODES:
            raise ValueError(f"generation_mode must be one of {GENERATION_MODES}, found {self.generation_mode!r}")
        with _STEPS_LOCK:
            steps = getattr(self, "_generation_steps", None)
            if steps is None:
                steps = OrderedDict()
                object.__setattr__(self, "_generation_steps", steps)  # plain attribute, not a sub-cell
            state = getattr(self, "_adapter_state", None)  # tuners: a graph bakes in the active adapters
            key = (rows, self.generation_mode, state.key() if state is not None else None)
            step = steps.pop(key, None)
            if step is not None and not step.lock.acquire(blocking=False):  # in use by another thread
                steps[key] = step
                return self._new_decode_step(rows, max_len)
            if step is None or step.cache.max_len < max_len:
                if step is not None:
                    step.lock.release()
                del step  # free the old cache before allocating the new one
                while len(steps) >= KEPT_DECODE_STEPS:
                    steps.popitem(last=False)
                step = self._new_decode_step(rows, max_len)
            steps[key] = step
            return step

    def _new_decode_step(self, rows: int, max_len: int) -> "DecodeStep":
        step = DecodeStep(self, KVCache.for_model(self, rows, max_len), self.generation_mode)
        step.lock.acquire()
        return step

    # --------------------------------------------------------------- settings
    def _generation_settings(self, generation_config: Optional[GenerationConfig], kwargs) -> GenerationConfig:
        return generation_settings(self, generation_config, kwargs)

    def _length_limit(self, config: GenerationConfig, prompt_len: int) -> int:
        return length_limit(config, prompt_len, self.config.max_position_embeddings, prompt_adapter_positions(self))

    # --------------------------------------------------------------- generate
    def generate(self, input_ids, attention_mask=None, generation_config: Optional[GenerationConfig] = None,
                 streamer=None, tokenizer=None, **kwargs) -> np.ndarray:
        """Continue prompts.

        Args:
            input_ids: one prompt (list of ids), several (list of lists, any lengths), or an array/Tensor
                [batch, seq] with ``attention_mask`` marking padding.
            attention_mask: [batch, seq], 1 for real tokens (array or Tensor input only).
            generation_config: settings; default the model's ``generation_config.json`` or its token ids.
            streamer: receives the prompt, then each new token (``put``), then ``end()``; batch size 1.
            tokenizer: needed for ``stop_strings``.
            kwargs: any :class:`GenerationConfig` field (``max_new_tokens``, ``do_sample``, ``top_p``,
                ``num_beams``, ...); unknown names are an error.
        Returns:
            int64 array ``[batch * num_return_sequences, length]``: each left-padded prompt followed by its
            new tokens; rows that finish early are filled with ``pad_token_id``.
        """
        config = self._generation_settings(generation_config, kwargs)
        rows = _rows(input_ids, attention_mask)
        prompt_len = max(len(r) for r in rows)
        max_len = self._length_limit(config, prompt_len)
        if config.stop_strings and tokenizer is None:
            raise ValueError("stop_strings need the tokenizer: pass tokenizer= to generate")
        if streamer is not None and (len(rows) > 1 or config.num_beams > 1 or config.num_return_sequences > 1):
            raise ValueError("a streamer needs a single prompt, num_beams=1 and num_return_sequences=1")
        ids = np.full((len(rows), prompt_len), config.pad_token_id, np.int64)
        mask = np.zeros((len(rows), prompt_len), np.int32)
        for i, row in enumerate(rows):
            ids[i, prompt_len - len(row):] = row
            mask[i, prompt_len - len(row):] = 1
        if streamer is not None:
            streamer.put(ids[:, prompt_len - len(rows[0]):])
        if config.num_beams > 1:
            return self._beam_search(ids, mask, max_len, config)
        if config.num_return_sequences > 1:
            ids, mask = np.repeat(ids, config.num_return_sequences, 0), np.repeat(mask, config.num_return_sequences, 0)
        return self._sample(ids, mask, max_len, config, streamer, tokenizer)

    def _runner(self, config: GenerationConfig, rows: int, prompt_len: int, max_len: int):
        if config.use_cache:
            return _CachedRunner(self, rows, prompt_len, max_len)
        return _UncachedRunner(self)

    def _sample(self, ids, mask, max_len, config, streamer, tokenizer) -> np.ndarray:
        rows, prompt_len = ids.shape
        try:
            with self._runner(config, rows, prompt_len, max_len) as runner:
                logits = runner.prefill(ids, mask)
                state = DecodingState(config, logits.shape[-1], [ids[r][mask[r] == 1] for r in range(rows)],
                                      prompt_len, max_len, tokenizer)
                while True:
                    next_tokens, _ = state.step(logits)
                    if streamer is not None:
                        streamer.put(next_tokens[:1])
                    if not state.unfinished.any():
                        break
                    logits = runner.step(next_tokens)
        finally:
            if streamer is not None:
                streamer.end()
        return np.concatenate([ids, state.tokens[:, :state.n_generated]], 1)

    # --------------------------------------------------------------- beam search
    def _beam_search(self, ids, mask, max_len, config) -> np.ndarray:
        """transformers' beam search (generation/utils.py ``_beam_search``), in numpy."""
        batch, prompt_len = ids.shape
        beams = config.num_beams
        eos = np.array(config.eos_token_ids, np.int64)
        keep = max(2, 1 + len(eos)) * beams  # candidates per prompt, so num_beams unfinished ones remain
        top_mask = np.arange(keep) < beams
        fill = config.pad_token_id if config.pad_token_id is not None else (eos[0] if len(eos) else -1)
        penalty, early = config.length_penalty, config.early_stopping
        rng = np.random.default_rng(config.seed)

        running = np.full((batch, beams, max_len), fill, np.int64)
        running[:, :, :prompt_len] = ids[:, None]
        finished = running.copy()
        running_scores = np.zeros((batch, beams), np.float32)
        running_scores[:, 1:] = -1e9
        finished_scores = np.full((batch, beams), -1e9, np.float32)
        finished_flags = np.zeros((batch, beams), bool)
        finished_lengths = np.zeros((batch, beams), np.int64)
        may_improve = np.ones((batch, 1), bool)

        flat_ids, flat_mask = np.repeat(ids, beams, 0), np.repeat(mask, beams, 0)
        with self._runner(config, batch * beams, prompt_len, max_len) as runner:
            logits = runner.prefill(flat_ids, flat_mask)
            processor = LogitsProcessor(config, logits.shape[-1])
            vocab = logits.shape[-1]
            seen = None
            cur = prompt_len
            while True:
                if config.repetition_penalty != 1.0:
                    seen = np.zeros((batch * beams, vocab), bool)
                    flat_running = running.reshape(batch * beams, max_len)
                    for r in range(batch * beams):
                        prompt = flat_running[r, :prompt_len][flat_mask[r] == 1]
                        seen[r, np.concatenate([prompt, flat_running[r, prompt_len:cur]])] = True
                log_probs = processor.process(log_softmax(logits.astype(np.float32)), seen, cur - prompt_len)
                if config.do_sample:
                    log_probs = processor.warp(log_probs)
                log_probs = (log_probs.reshape(batch, beams, vocab) + running_scores[:, :, None]).reshape(batch, -1)
                if config.do_sample:
                    probs = np.exp(log_probs - log_probs.max(-1, keepdims=True))
                    probs /= probs.sum(-1, keepdims=True)
                    top = np.stack([rng.choice(log_probs.shape[1], keep, replace=False, p=p) for p in probs])
                else:
                    top = np.argsort(-log_probs, axis=-1, kind="stable")[:, :keep]
                top_scores = np.take_along_axis(log_probs, top, -1)
                source_beam, token = top // vocab, top % vocab
                candidates = np.take_along_axis(running, source_beam[:, :, None], 1)
                candidates[:, :, cur] = token
                hits = np.isin(token, eos) | (cur + 1 >= max_len)

                # beams that go on: the best `beams` candidates that did not just finish
                running_candidate_scores = top_scores + hits * np.float32(-1e9)
                order = np.argsort(-running_candidate_scores, axis=-1, kind="stable")[:, :beams]
                running = np.take_along_axis(candidates, order[:, :, None], 1)
                running_scores = np.take_along_axis(running_candidate_scores, order, -1)
                parent = np.take_along_axis(source_beam, order, -1)

                # finished hypotheses: merge the newly finished top-`beams` candidates, keep the best `beams`
                just_finished = hits & top_mask[None, :]
                scored = top_scores / np.float32((cur + 1 - prompt_len) ** penalty)
                scored = scored + (finished_flags.all(-1, keepdims=True) & (early is True)) * np.float32(-1e9)
                scored = scored + (~may_improve) * np.float32(-1e9)
                scored = scored + (~just_finished) * np.float32(-1e9)
                merged_scores = np.concatenate([finished_scores, scored], 1)
                best = np.argsort(-merged_scores, axis=-1, kind="stable")[:, :beams]
                finished = np.take_along_axis(np.concatenate([finished, candidates], 1), best[:, :, None], 1)
                finished_scores = np.take_along_axis(merged_scores, best, -1)
                finished_flags = np.take_along_axis(np.concatenate([finished_flags, just_finished], 1), best, -1)
                new_lengths = np.full((batch, keep), cur + 1 - prompt_len, np.int64)
                finished_lengths = np.take_along_axis(np.concatenate([finished_lengths, new_lengths], 1), best, -1)

                cur += 1
                # can a running beam still beat the worst finished one? (transformers' _check_early_stop_heuristic)
                hypothetical = (max_len - prompt_len) if (early == "never" and penalty > 0) else (cur - prompt_len)
                best_running = running_scores[:, :1] / np.float32(hypothetical ** penalty)
                worst_finished = np.where(finished_flags, finished_scores.min(-1, keepdims=True), np.float32(-1e9))
                may_improve = may_improve & (best_running > worst_finished).any(-1, keepdims=True)
                open_beams = not (finished_flags.all() and early is True)
                if not (may_improve.any() and open_beams and not hits.all()):
                    break
                flat_parent = (parent + np.arange(batch)[:, None] * beams).reshape(-1)
                runner.reorder(flat_parent)
                flat_mask = flat_mask[flat_parent]
                logits = runner.step(running[:, :, cur - 1].reshape(-1))

        keep_n = config.num_return_sequences
        out = finished[:, :keep_n].reshape(batch * keep_n, max_len)
        length = prompt_len + int(finished_lengths[:, :keep_n].max())
        return out[:, :length]
