"""Datasets for fine-tuning: read records, tokenize them with loss masks, and batch them for (data-parallel)
training.

- :func:`build_dataset`: ``.json``/``.jsonl``/``.txt`` files or lists of dicts in Alpaca, chat (OpenAI
  messages or ShareGPT), plain-text or classification form -> :class:`TokenizedDataset`.
- :class:`TokenizedDataset`: ``ds[i]``, token counts, and ``batches(...)``: padded numpy batches with a
  sharding contract for data parallelism (see :mod:`mindformers.dataset.tokenized`).
- :func:`split_dataset`: a reproducible train/eval split.

This package does not use MindSpore itself: batches are numpy arrays the trainer turns into tensors.
"""

from .builder import build_dataset
from .formats import (
    ALPACA_PROMPT_INPUT,
    ALPACA_PROMPT_NO_INPUT,
    FORMATS,
    IGNORE_INDEX,
    detect_format,
    encode_chats,
)
from .readers import Record, read_records
from .tokenized import TokenizedDataset, split_dataset

__all__ = [
    "ALPACA_PROMPT_INPUT",
    "ALPACA_PROMPT_NO_INPUT",
    "FORMATS",
    "IGNORE_INDEX",
    "Record",
    "TokenizedDataset",
    "build_dataset",
    "detect_format",
    "encode_chats",
    "read_records",
    "split_dataset",
]
