"""Turning next-token logits into choices, in numpy on the host (a [batch, vocab] row per step).

Processors run in Hugging Face's order: repetition penalty, end-of-sequence suppression (min_new_tokens),
then, when sampling, temperature, top-k and top-p.
"""
from typing import List, Optional

import numpy as np

from .config import GenerationConfig

NEG_INF = -np.inf


def repetition_penalty(scores: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """CTRL's penalty (Keskar et al. 2019): scores of tokens already in a row are divided by ``penalty``
    when positive and multiplied when negative.

    Args:
        scores: [batch, vocab] float32.
        seen: [batch, vocab] bool, tokens present in each row (prompt and generated; padding excluded).
    """
    penalised = np.where(scores < 0, scores * penalty, scores / penalty)
    return np.where(seen, penalised, scores)


def top_k_filter(scores: np.ndarray, k: int) -> np.ndarray:
    """Keep the k highest scores of each row (ties at the k-th value kept, as torch.topk's threshold)."""
    if k <= 0 or k >= scores.shape[-1]:
        return scores
    kth = np.partition(scores, -k, axis=-1)[:, -k][:, None]
    return np.where(scores < kth, NEG_INF, scores)


def top_p_filter(scores: np.ndarray, p: float) -> np.ndarray:
    """Nucleus filtering (Holtzman et al. 2019): drop the least likely tokens whose total probability is
    at most ``1 - p``; the most likely token always stays."""
    if p >= 1.0:
        return scores
    order = np.argsort(scores, axis=-1, kind="stable")  # ascending
    sorted_scores = np.take_along_axis(scores, order, -1)
    probs = np.exp(sorted_scores - sorted_scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    remove_sorted = np.cumsum(probs, -1) <= (1 - p)
    remove_sorted[:, -1] = False
    remove = np.zeros_like(remove_sorted)
    np.put_along_axis(remove, order, remove_sorted, -1)
    return np.where(remove, NEG_INF, scores)


def log_softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


class LogitsProcessor:
    """Applies a :class:`GenerationConfig`'s processors to a step's scores.

    Args:
        config: the generation settings.
        vocab_size: width of the score rows.
    """

    def __init__(self, config: GenerationConfig, vocab_size: int):
        self.config = config
        self.eos = [i for i in config.eos_token_ids if 0 <= i < vocab_size]

    def process(self, scores: np.ndarray, seen: Optional[np.ndarray], n_generated: int) -> np.ndarray:
        """Penalties and constraints (used by every decoding strategy)."""
        config = self.config
        if config.repetition_penalty != 1.0 and seen is not None:
            scores = repetition_penalty(scores, seen, config.repetition_penalty)
        if n_generated < config.min_new_tokens and self.eos:
            scores = scores.copy()
            scores[:, self.eos] = NEG_INF
        return scores

    def warp(self, scores: np.ndarray) -> np.ndarray:
        """Temperature, top-k and top-p (used when sampling)."""
        config = self.config
        if config.temperature != 1.0:
            scores = scores / config.temperature
        scores = top_k_filter(scores, config.top_k)
        return top_p_filter(scores, config.top_p)


def sample(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One token per row drawn from softmax(scores). Returns int64 [batch]."""
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    cumulative = np.cumsum(probs, -1)
    draws = rng.random((scores.shape[0], 1)) * cumulative[:, -1:]
    return np.minimum((cumulative < draws).sum(-1), scores.shape[-1] - 1).astype(np.int64)


def stop_string_hit(texts: List[str], stop_strings: List[str]) -> List[bool]:
    """Whether each row's generated text contains one of ``stop_strings``."""
    return [any(s in text for s in stop_strings) for text in texts]
