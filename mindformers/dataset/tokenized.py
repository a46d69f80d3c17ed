"""``TokenizedDataset``: tokenized examples in memory, with shuffled, padded and sharded batches.

Batching and sharding contract (what data-parallel training relies on)
----------------------------------------------------------------------
Let ``N = len(ds)``, ``B = batch_size``, ``W = world_size`` and ``G = B * W`` (the global batch size).

1. Epoch order: ``order = ds.epoch_order(shuffle, seed, epoch)``: with ``shuffle`` a permutation of
   ``range(N)`` drawn from ``numpy.random.default_rng([seed, epoch])``, else ``range(N)``. It depends only
   on ``(seed, epoch)``, never on ``rank`` or ``world_size``, so every rank computes the same order and each
   epoch has its own.
2. Global batch ``i`` is ``order[i * G:(i + 1) * G]``: exactly the ``i``-th batch a single process yields with
   ``batch_size=G`` (same ``shuffle``/``seed``/``epoch``).
3. Rank ``r``'s ``i``-th batch is the ``r``-th contiguous slice of global batch ``i``,
   ``order[i * G + r * B:i * G + (r + 1) * B]``. The ranks' parts are disjoint, equally sized, and their
   concatenation in rank order is global batch ``i``.
4. The last, partial global batch (``m = N % G > 0`` examples):

   - ``drop_last=True``: skipped by every rank (those ``m`` examples, different ones each shuffled epoch,
     are not seen in that epoch). Every batch has ``B`` rows.
   - ``drop_last=False``: it is split into ``W`` contiguous parts of ``k = ceil(m / W)`` slots each, rank
     ``r`` taking ``[r * k, (r + 1) * k)``; slots past ``m`` are *filler rows*: ``input_ids`` all padding,
     ``attention_mask`` all 0, ``labels`` all -100 (for classification the ``[B]`` label is -100 too, which
     a classification loss must mask out). With ``W == 1`` there are no filler rows: the last batch just has
     ``m`` rows. Every example is then seen exactly once per epoch.

   Every rank yields the same number of batches, ``ds.num_batches(B, drop_last, W)``, and in a given step
   all ranks' batches have the same number of rows, so collective operations never wait on a missing rank.
   Because the last step's ranks can hold different numbers of label tokens (or none), a data-parallel loss
   equal to the single-process one weights each rank's summed loss by the global label-token count, not an
   average of per-rank means.

Padding: rows are right-padded to the longest row of *that* batch (so ranks' ``T`` may differ), rounded up
to a multiple of ``pad_to_multiple_of`` when given (``pad_to_multiple_of=seq_length`` gives one shape for all
batches: one compiled graph).
"""

import math
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .formats import IGNORE_INDEX

TASKS = ("text_generation", "text_classification")


class TokenizedDataset:
    """Tokenized examples: causal-LM rows (``input_ids`` + aligned ``labels``) or classification rows
    (``input_ids`` + one class id).

    Usually made by :func:`~mindformers.dataset.build_dataset`.

    Args:
        input_ids: one sequence of token ids per example.
        labels: for ``text_generation`` one sequence per example, as long as its ``input_ids`` (-100 where no
            loss is taken); for ``text_classification`` one int class id per example.
        pad_token_id: the id padding is written with.
        task: ``"text_generation"`` or ``"text_classification"``.
        data_format: the record format the examples came from (informational).
        seq_length: the longest row allowed when the dataset was built (informational).
        label_names: classification: the class names, indexed by class id.
        num_truncated: how many records were cut to ``seq_length`` while building (informational).
    """

    def __init__(
        self,
        input_ids: Sequence[Sequence[int]],
        labels: Sequence[Union[int, Sequence[int]]],
        *,
        pad_token_id: int,
        task: str = "text_generation",
        data_format: Optional[str] = None,
        seq_length: Optional[int] = None,
        label_names: Optional[List[str]] = None,
        num_truncated: int = 0,
    ):
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, found {task!r}")
        if len(input_ids) != len(labels):
            raise ValueError(
                f"input_ids has {len(input_ids)} examples but labels has {len(labels)}; pass one per example"
            )
        if pad_token_id is None:
            raise ValueError(
                "pad_token_id is None; pass the tokenizer's pad id (or its EOS id when it has no pad token)"
            )
        self.task = task
        self.data_format = data_format
        self.seq_length = seq_length
        self.label_names = label_names
        self.num_truncated = num_truncated
        self.pad_token_id = int(pad_token_id)
        self._input_ids = [np.asarray(row, dtype=np.int32).reshape(-1) for row in input_ids]
        if task == "text_classification":
            self._labels = np.asarray(labels, dtype=np.int32).reshape(-1)
        else:
            self._labels = [np.asarray(row, dtype=np.int32).reshape(-1) for row in labels]
            for i, (ids, lab) in enumerate(zip(self._input_ids, self._labels)):
                if ids.shape != lab.shape:
                    raise ValueError(f"example {i}: {ids.size} input_ids but {lab.size} labels; they must align")
        self._lengths = np.fromiter((row.size for row in self._input_ids), dtype=np.int64, count=len(self._input_ids))

    # ------------------------------------------------------------------ examples

    def __len__(self) -> int:
        return len(self._input_ids)

    def __getitem__(self, index: int) -> Dict[str, np.ndarray]:
        """Example ``index``: ``{"input_ids": [L] int32, "labels": [L] int32}`` for text generation,
        ``{"input_ids": [L] int32, "label": [] int32}`` for classification."""
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an int, found {type(index).__name__}; use subset(indices) for several")
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for a dataset of {len(self)} examples")
        ids = self._input_ids[index]
        if self.task == "text_classification":
            return {"input_ids": ids, "label": np.asarray(self._labels[index], dtype=np.int32)}
        return {"input_ids": ids, "labels": self._labels[index]}

    @property
    def lengths(self) -> np.ndarray:
        """[N] int64: the number of tokens of each example."""
        return self._lengths

    @property
    def num_tokens(self) -> int:
        """Total number of (non-padding) tokens over all examples."""
        return int(self._lengths.sum())

    @property
    def num_label_tokens(self) -> int:
        """Number of label tokens (labels != -100); for classification, the number of examples."""
        if self.task == "text_classification":
            return len(self)
        return int(sum(int((lab != IGNORE_INDEX).sum()) for lab in self._labels))

    @property
    def num_labels(self) -> Optional[int]:
        """Classification: the number of classes (from ``label_names``, else the largest label + 1)."""
        if self.task != "text_classification":
            return None
        if self.label_names is not None:
            return len(self.label_names)
        return int(self._labels.max()) + 1 if len(self) else 0

    def subset(self, indices: Sequence[int]) -> "TokenizedDataset":
        """A dataset of the examples at ``indices`` (in that order; the arrays are shared, not copied)."""
        indices = [int(i) for i in indices]
        labels = self._labels[indices] if self.task == "text_classification" else [self._labels[i] for i in indices]
        return TokenizedDataset(
            [self._input_ids[i] for i in indices],
            labels,
            pad_token_id=self.pad_token_id,
            task=self.task,
            data_format=self.data_format,
            seq_length=self.seq_length,
            label_names=self.label_names,
        )

    # ------------------------------------------------------------------ batching

    def epoch_order(self, shuffle: bool = True, seed: int = 0, epoch: int = 0) -> np.ndarray:
        """The order examples are visited in during ``epoch`` (item 1 of the module's contract).

        Args:
            shuffle: permute (else ``0..N-1``).
            seed: the run's seed.
            epoch: the epoch number; each epoch gets its own permutation.

        Returns:
            [N] int64 example indices.
        """
        if not shuffle:
            return np.arange(len(self), dtype=np.int64)
        return np.random.default_rng([int(seed), int(epoch)]).permutation(len(self)).astype(np.int64)

    def num_batches(self, batch_size: int, drop_last: bool = False, world_size: int = 1) -> int:
        """How many batches each rank yields per epoch.

        Args:
            batch_size: rows per batch on one rank.
            drop_last: skip the last, partial global batch.
            world_size: number of data-parallel ranks.

        Returns:
            ``N // (batch_size * world_size)`` with ``drop_last``, else that rounded up.
        """
        self._check_batching(batch_size, drop_last, 0, world_size)
        global_batch = batch_size * world_size
        return len(self) // global_batch if drop_last else math.ceil(len(self) / global_batch)

    def batch_indices(
        self,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
        full_last: bool = False,
    ) -> Iterator[np.ndarray]:
        """The example indices of each of this rank's batches in one epoch (see the module's contract).

        Args:
            batch_size: rows per batch on one rank.
            shuffle, seed, epoch: the epoch order (:meth:`epoch_order`).
            drop_last: skip the last, partial global batch.
            rank, world_size: this rank and the number of data-parallel ranks.
            start_batch: skip this many batches first (to resume inside an epoch).
            full_last: fill the last, partial batch with filler rows up to ``batch_size`` (every batch has
                one shape, so a compiled step is not compiled again for it).

        Returns:
            An iterator of [rows] int64 arrays; -1 marks a filler row.
        """
        self._check_batching(batch_size, drop_last, rank, world_size)
        if not isinstance(start_batch, (int, np.integer)) or start_batch < 0:
            raise ValueError(f"start_batch must be an int >= 0, found {start_batch!r}")
        order = self.epoch_order(shuffle, seed, epoch)
        return self._indices(order, batch_size, drop_last, rank, world_size, int(start_batch), full_last)

    def _indices(self, order, batch_size, drop_last, rank, world_size, start_batch, full_last) -> Iterator[np.ndarray]:
        global_batch = batch_size * world_size
        full = len(order) // global_batch
        for i in range(start_batch, full):
            first = i * global_batch + rank * batch_size
            yield order[first:first + batch_size]
        tail = order[full * global_batch:]
        if tail.size and not drop_last and start_batch <= full:
            part = math.ceil(tail.size / world_size)
            mine = tail[rank * part:(rank + 1) * part]
            rows = batch_size if full_last else part
            yield np.concatenate([mine, np.full(rows - mine.size, -1, dtype=np.int64)])

    def batches(
        self,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        pad_to_multiple_of: Optional[int] = None,
        start_batch: int = 0,
        full_last: bool = False,
    ) -> Iterator[Dict[str, np.ndarray]]:
        """This rank's padded batches for one epoch (see the module's contract).

        Args:
            batch_size: rows per batch on one rank.
            shuffle, seed, epoch: the epoch order (:meth:`epoch_order`).
            drop_last: skip the last, partial global batch.
            rank, world_size: this rank and the number of data-parallel ranks.
            pad_to_multiple_of: round each batch's length up to a multiple of this.
            start_batch: skip this many batches first (to resume inside an epoch).
            full_last: fill the last, partial batch with filler rows up to ``batch_size``.

        Returns:
            An iterator of batches as returned by :meth:`collate`.
        """
        _check_multiple(pad_to_multiple_of)
        indices = self.batch_indices(batch_size, shuffle, seed, epoch, drop_last, rank, world_size, start_batch,
                                     full_last)
        return (self.collate(index, pad_to_multiple_of) for index in indices)

    def collate(self, indices: Sequence[int], pad_to_multiple_of: Optional[int] = None) -> Dict[str, np.ndarray]:
        """Pad the examples at ``indices`` into one batch (an index of -1 gives a filler row).

        Args:
            indices: example indices; -1 for a filler row.
            pad_to_multiple_of: round the length up to a multiple of this.

        Returns:
            ``input_ids`` [B, T] int32 (right-padded with ``pad_token_id``), ``attention_mask`` [B, T] int32
            (1 on tokens), and ``labels``: [B, T] int32 with -100 on padding for text generation, [B] int32
            for classification (-100 for filler rows).
        """
        _check_multiple(pad_to_multiple_of)
        indices = [int(i) for i in indices]
        rows = [self._input_ids[i] if i >= 0 else None for i in indices]
        length = max([row.size for row in rows if row is not None] + [1])
        if pad_to_multiple_of:
            length = math.ceil(length / pad_to_multiple_of) * pad_to_multiple_of
        batch = len(indices)
        input_ids = np.full((batch, length), self.pad_token_id, dtype=np.int32)  # [B, T]
        attention_mask = np.zeros((batch, length), dtype=np.int32)  # [B, T]
        classification = self.task == "text_classification"
        labels = np.full((batch,) if classification else (batch, length), IGNORE_INDEX, dtype=np.int32)
        for b, (i, row) in enumerate(zip(indices, rows)):
            if row is None:
                continue
            input_ids[b, :row.size] = row
            attention_mask[b, :row.size] = 1
            if classification:
                labels[b] = self._labels[i]
            else:
                labels[b, :row.size] = self._labels[i]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def _check_batching(self, batch_size: int, drop_last: bool, rank: int, world_size: int) -> None:
        for name, value in (("batch_size", batch_size), ("world_size", world_size)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"{name} must be a positive int, found {value!r}")
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be an int in [0, world_size={world_size}), found {rank!r}")
        global_batch = batch_size * world_size
        if len(self) == 0:
            raise ValueError("the dataset is empty: no batch can be made")
        if drop_last and global_batch > len(self):
            who = f"batch_size={batch_size}" + (f" x world_size={world_size}" if world_size > 1 else "")
            raise ValueError(
                f"{who} = {global_batch} is larger than the dataset ({len(self)} examples), so drop_last=True "
                "leaves no batch at all; use a smaller batch_size or drop_last=False"
            )

    def __repr__(self) -> str:
        return (
            f"TokenizedDataset(task={self.task!r}, data_format={self.data_format!r}, examples={len(self)}, "
            f"tokens={self.num_tokens}, label_tokens={self.num_label_tokens}, seq_length={self.seq_length})"
        )


def _check_multiple(pad_to_multiple_of: Optional[int]) -> None:
    value = pad_to_multiple_of
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0):
        raise ValueError(f"pad_to_multiple_of must be None or a positive int, found {pad_to_multiple_of!r}")


def split_dataset(
    ds: TokenizedDataset, eval_fraction: float = 0.1, seed: int = 0
) -> Tuple[TokenizedDataset, TokenizedDataset]:
    """Split a dataset into train and eval parts at random (reproducibly).

    Args:
        ds: the dataset.
        eval_fraction: the share of examples held out, in (0, 1); the eval part gets ``round(N * fraction)``
            examples, at least 1.
        seed: seeds the permutation.

    Returns:
        ``(train, eval)``, disjoint, together all of ``ds``; each keeps the original relative order.
    """
    if not isinstance(eval_fraction, (int, float)) or not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be a number in (0, 1), found {eval_fraction!r}")
    n_eval = max(1, round(len(ds) * eval_fraction))
    if n_eval >= len(ds):
        raise ValueError(
            f"eval_fraction={eval_fraction} of {len(ds)} examples leaves nothing to train on; "
            "use a smaller fraction or a larger dataset"
        )
    held_out = np.random.default_rng(int(seed)).permutation(len(ds))[:n_eval]
    is_eval = np.zeros(len(ds), dtype=bool)
    is_eval[held_out] = True
    return ds.subset(np.flatnonzero(~is_eval)), ds.subset(np.flatnonzero(is_eval))
