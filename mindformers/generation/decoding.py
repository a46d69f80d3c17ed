"""Token choice and stopping for rows that decode one token per step: :class:`DecodingState`.

``generate()`` keeps one state for all the rows of a call (greedy or sampling; beam search ranks whole
beams and has its own loop); the serving engine keeps one per request, each with its own sampler, since
requests join and leave a batch between steps. Either way a step is::

    logits [rows, vocab] -> processors (penalties, min_new_tokens) -> warpers + draw, or argmax
                         -> next tokens [rows] and which rows finished: "stop" (an end-of-sequence token
                            or a stop string in the generated text) or "length" (the length limit)
"""
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from .config import GenerationConfig
from .logits_process import LogitsProcessor, sample, stop_string_hit


class DecodingState:
    """The decoding state of a set of rows that start together (one prompt length).

    Args:
        config: the generation settings (processors, ``do_sample``, ``seed``, ``eos_token_id``,
            ``stop_strings``, ``pad_token_id``).
        vocab_size: width of the logits rows.
        prompts: each row's real prompt ids (no padding); repetition penalty counts them as seen.
        prompt_len: the length every prompt is counted as (left-padded to the longest).
        limit: total length (``prompt_len`` + new tokens) at which a row ends with "length".
        tokenizer: decodes the generated ids for ``stop_strings`` (``batch_decode(rows) -> texts``).

    Attributes:
        processor: the config's logits processors and warpers.
        rng: the sampler, seeded with ``config.seed``; one draw per row per step, finished rows included,
            so a row's draws do not depend on when the others finish.
        seen: [rows, vocab] bool, tokens in each row so far (repetition penalty only, else None).
        eos: the end-of-sequence ids.
        stop_strings: strings that end a row once its generated text contains one.
        tokens: [rows, limit - prompt_len] the ids generated so far (``pad_token_id`` after a row finished).
        n_generated: steps taken.
        unfinished: [rows] bool, rows still decoding.
    """

    def __init__(self, config: GenerationConfig, vocab_size: int, prompts: Sequence[Sequence[int]], prompt_len: int,
                 limit: int, tokenizer: Any = None):
        self.config = config
        self.processor = LogitsProcessor(config, vocab_size)
        self.rng = np.random.default_rng(config.seed)
        rows = len(prompts)
        self.seen: Optional[np.ndarray] = None
        if config.repetition_penalty != 1.0:
            self.seen = np.zeros((rows, vocab_size), bool)
            for r, prompt in enumerate(prompts):
                self.seen[r, list(prompt)] = True
        self.eos = np.array(config.eos_token_ids, np.int64)
        stop = config.stop_strings
        self.stop_strings: List[str] = [stop] if isinstance(stop, str) else list(stop or [])
        if self.stop_strings and tokenizer is None:
            raise ValueError("stop_strings need the tokenizer to decode the generated ids; none was given")
        self.tokenizer = tokenizer
        # tokens whose text may hold a stop string that just appeared: a token adds at least one byte of text
        # (byte-level BPE), a character takes at most 4
        self.window = 4 * max((len(s) for s in self.stop_strings), default=0) + 4
        self.prompt_len, self.limit = prompt_len, limit
        self.tokens = np.full((rows, limit - prompt_len), config.pad_token_id, np.int64)
        self.n_generated = 0
        self.unfinished = np.ones(rows, bool)

    def step(self, logits: np.ndarray) -> Tuple[np.ndarray, List[Optional[str]]]:
        """Choose every row's next token.

        Args:
            logits: [rows, vocab] float32, each row's next-token logits.
        Returns:
            (next tokens int64 [rows], ``pad_token_id`` for rows that had finished before; why each row
            finished at this step: "stop", "length", or None for rows that go on or had finished before).
        """
        config = self.config
        scores = self.processor.process(logits, self.seen, self.n_generated)
        if config.do_sample:
            next_tokens = sample(self.processor.warp(scores), self.rng)
        else:
            next_tokens = scores.argmax(-1).astype(np.int64)
        running = self.unfinished.copy()
        next_tokens = np.where(running, next_tokens, config.pad_token_id)
        self.tokens[:, self.n_generated] = next_tokens
        self.n_generated += 1
        if self.seen is not None:
            self.seen[np.arange(len(next_tokens)), next_tokens] |= running
        self.unfinished &= ~np.isin(next_tokens, self.eos)
        if self.stop_strings:
            texts = self.tokenizer.batch_decode(self.tokens[:, max(0, self.n_generated - self.window):self.n_generated])
            self.unfinished &= ~np.array(stop_string_hit(texts, self.stop_strings))
        reasons: List[Optional[str]] = [None] * len(next_tokens)
        for r in np.flatnonzero(running):
            if not self.unfinished[r]:
                reasons[r] = "stop"
            elif self.prompt_len + self.n_generated >= self.limit:
                reasons[r] = "length"
                self.unfinished[r] = False
        return next_tokens, reasons
