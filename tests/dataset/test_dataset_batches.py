"""TokenizedDataset batches: padding and masks, epoch order, the data-parallel sharding contract, errors."""

import numpy as np
import pytest

from mindformers.dataset import TokenizedDataset, build_dataset, split_dataset

PAD = 0


def toy(n, task="text_generation"):
    """Example i has i % 5 + 1 tokens, all equal to i + 1 (so a row names its example); labels mask token 0."""
    rows = [[i + 1] * (i % 5 + 1) for i in range(n)]
    if task == "text_classification":
        return TokenizedDataset(rows, [i % 3 for i in range(n)], pad_token_id=PAD, task=task)
    labels = [[-100] + row[1:] for row in rows]
    return TokenizedDataset(rows, labels, pad_token_id=PAD)


def example_ids(batch):
    """The example index of each row (-1 for filler rows), read back from the toy tokens."""
    return [int(row[0]) - 1 if mask[0] else -1 for row, mask in zip(batch["input_ids"], batch["attention_mask"])]


def test_padding_masks_and_dtypes():
    ds = toy(4)
    batch = next(ds.batches(4, shuffle=False))
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        "input_ids": ((4, 4), np.int32), "attention_mask": ((4, 4), np.int32), "labels": ((4, 4), np.int32)
    }
    assert batch["input_ids"].tolist() == [[1, 0, 0, 0], [2, 2, 0, 0], [3, 3, 3, 0], [4, 4, 4, 4]]
    assert batch["attention_mask"].tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    x = -100
    assert batch["labels"].tolist() == [[x, x, x, x], [x, 2, x, x], [x, 3, 3, x], [x, 4, 4, 4]]
    assert next(ds.batches(2, shuffle=False, pad_to_multiple_of=8))["input_ids"].shape == (2, 8)
    assert next(ds.batches(3, shuffle=False, pad_to_multiple_of=2))["input_ids"].shape == (3, 4)
    assert ds.num_tokens == 10 and ds.num_label_tokens == 6 and ds.lengths.tolist() == [1, 2, 3, 4]


def test_real_tokenizers_pad_with_pad_or_eos(gpt2_tok, smollm2_tok):
    texts = [{"text": "one"}, {"text": "two three four"}]
    for tok, pad in ((gpt2_tok, 50256), (smollm2_tok, 2)):
        ds = build_dataset(texts, tok, packing=False)
        assert ds.pad_token_id == pad
        batch = next(ds.batches(2, shuffle=False))
        short = len(ds[0]["input_ids"])
        assert (batch["input_ids"][0, short:] == pad).all() and (batch["labels"][0, short:] == -100).all()
        assert batch["attention_mask"].sum(1).tolist() == [short, len(ds[1]["input_ids"])]


def test_epoch_order_is_a_seeded_permutation_per_epoch():
    ds = toy(50)
    orders = {(s, e): ds.epoch_order(True, s, e).tolist() for s in (0, 1) for e in (0, 1)}
    assert all(sorted(o) == list(range(50)) for o in orders.values())
    assert len({tuple(o) for o in orders.values()}) == 4  # different per seed and per epoch
    assert ds.epoch_order(True, 0, 1).tolist() == orders[(0, 1)]  # deterministic
    assert ds.epoch_order(False, 3, 7).tolist() == list(range(50))
    # shuffled batches follow it
    got = [i for b in ds.batch_indices(8, seed=1, epoch=0) for i in b.tolist()]
    assert got == orders[(1, 0)]


@pytest.mark.parametrize("n, batch_size, world_size", [(23, 3, 2), (24, 3, 2), (7, 2, 4), (40, 4, 3)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_split_each_global_batch(n, batch_size, world_size, drop_last):
    ds = toy(n)
    global_batch = batch_size * world_size
    if drop_last and global_batch > n:
        with pytest.raises(ValueError, match=r"is larger than the dataset \(7 examples\), so drop_last=True"):
            ds.num_batches(batch_size, drop_last, world_size)
        return
    for epoch in (0, 1):
        single = [b.tolist() for b in ds.batch_indices(global_batch, seed=5, epoch=epoch, drop_last=drop_last)]
        ranks = [
            [b.tolist() for b in ds.batch_indices(batch_size, seed=5, epoch=epoch, drop_last=drop_last, rank=r,
                                                  world_size=world_size)]
            for r in range(world_size)
        ]
        expected_batches = n // global_batch if drop_last else -(-n // global_batch)
        assert len(single) == expected_batches
        assert all(len(r) == expected_batches == ds.num_batches(batch_size, drop_last, world_size) for r in ranks)
        for i, global_rows in enumerate(single):
            # all ranks' i-th batches have the same number of rows, and their concatenation in rank order
            # is the single process's i-th batch (filler rows, -1, only at the ends)
            sizes = {len(r[i]) for r in ranks}
            assert len(sizes) == 1
            joined = [j for r in ranks for j in r[i]]
            assert [j for j in joined if j >= 0] == global_rows
            if len(global_rows) == global_batch:
                assert sizes == {batch_size} and -1 not in joined
        seen = [j for r in ranks for b in r for j in b if j >= 0]
        assert len(seen) == len(set(seen))  # disjoint
        if not drop_last:
            assert sorted(seen) == list(range(n))  # every example exactly once per epoch
        else:
            assert len(seen) == n // global_batch * global_batch


def test_sharded_batches_hold_the_same_rows_as_the_global_batch():
    ds = toy(23)  # global batch 6: three full batches, then 5 examples split 3 + (2 and one filler row)
    single = list(ds.batches(6, seed=2, epoch=3))
    ranks = [list(ds.batches(3, seed=2, epoch=3, rank=r, world_size=2)) for r in range(2)]
    for i in range(4):
        assert example_ids(ranks[0][i]) + example_ids(ranks[1][i]) == example_ids(single[i]) + [-1] * (i == 3)
    filler = {k: v[-1] for k, v in ranks[1][3].items()}
    assert (filler["input_ids"] == PAD).all() and (filler["attention_mask"] == 0).all()
    assert (filler["labels"] == -100).all()
    # label tokens: the two ranks together carry exactly the global batch's
    for i in range(4):
        assert sum(int((r[i]["labels"] != -100).sum()) for r in ranks) == int((single[i]["labels"] != -100).sum())
    # the epoch's order changes with the epoch
    assert example_ids(next(ds.batches(6, seed=2, epoch=4))) != example_ids(single[0])


def test_classification_batches_and_filler_label():
    ds = toy(5, task="text_classification")
    assert ds[3]["label"].shape == () and int(ds[3]["label"]) == 0
    assert ds.num_label_tokens == 5 and ds.num_labels == 3
    batches = list(ds.batches(2, shuffle=False, rank=1, world_size=2))
    assert [b["labels"].tolist() for b in batches] == [[2, 0], [-100]]
    assert batches[1]["input_ids"].tolist() == [[PAD]] and batches[1]["attention_mask"].tolist() == [[0]]


def test_full_last_fills_the_partial_batch_with_filler_rows():
    ds = toy(7)
    assert [b.tolist() for b in ds.batch_indices(3, shuffle=False, full_last=True)] == [[0, 1, 2], [3, 4, 5], [6, -1, -1]]
    last = list(ds.batches(3, shuffle=False, full_last=True))[-1]
    assert last["input_ids"].shape[0] == 3 and (last["labels"][1:] == -100).all()
    assert last["attention_mask"][1:].sum() == 0 and (last["input_ids"][1:] == PAD).all()
    ranks = [[b.tolist() for b in ds.batch_indices(2, shuffle=False, rank=r, world_size=2, full_last=True)]
             for r in range(2)]
    assert ranks == [[[0, 1], [4, 5]], [[2, 3], [6, -1]]]
    classes = toy(5, task="text_classification")
    assert list(classes.batches(2, shuffle=False, full_last=True))[-1]["labels"].tolist() == [int(classes[4]["label"]), -100]


def test_resuming_inside_an_epoch():
    ds = toy(23)
    whole = [b.tolist() for b in ds.batch_indices(3, seed=1, rank=1, world_size=2)]
    assert [b.tolist() for b in ds.batch_indices(3, seed=1, rank=1, world_size=2, start_batch=2)] == whole[2:]
    assert list(ds.batch_indices(3, seed=1, rank=1, world_size=2, start_batch=9)) == []


def test_batching_errors():
    ds = toy(5)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            ds.batches(bad)
    with pytest.raises(ValueError, match=r"rank must be an int in \[0, world_size=2\), found 2"):
        ds.batches(1, rank=2, world_size=2)
    with pytest.raises(ValueError, match=r"batch_size=8 = 8 is larger than the dataset \(5 examples\)"):
        ds.batches(8, drop_last=True)
    with pytest.raises(ValueError, match="pad_to_multiple_of must be None or a positive int"):
        ds.batches(2, pad_to_multiple_of=0)
    with pytest.raises(IndexError, match="index 5 is out of range for a dataset of 5 examples"):
        ds[5]
    assert ds.num_batches(8) == 1 and [len(b) for b in ds.batch_indices(8)] == [5]  # without drop_last: one small batch


def test_split_dataset_is_disjoint_complete_and_reproducible():
    ds = toy(20)
    train, evaluation = split_dataset(ds, 0.25, seed=3)
    assert (len(train), len(evaluation)) == (15, 5)
    ids = lambda d: [int(d[i]["input_ids"][0]) - 1 for i in range(len(d))]  # noqa: E731
    assert sorted(ids(train) + ids(evaluation)) == list(range(20))
    assert ids(train) == sorted(ids(train))  # original order kept
    assert ids(split_dataset(ds, 0.25, seed=3)[1]) == ids(evaluation)
    assert ids(split_dataset(ds, 0.25, seed=4)[1]) != ids(evaluation)
    with pytest.raises(ValueError, match=r"eval_fraction must be a number in \(0, 1\)"):
        split_dataset(ds, 1.0)
