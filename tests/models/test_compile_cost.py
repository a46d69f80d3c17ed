"""mindspore.ops functions that are slow to compile stay out of the package: their argument checks are Python
that MindSpore parses into every graph calling them (ops.arange ~0.6 s a call site, ops.cross_entropy ~1 s,
ops.full / fill / full_like ~0.1 s on MindSpore 2.10; a tiny Llama's evaluation graph compiled in 1.1 s with
the replacements in mindformers/models/common/layers.py, 3.5 s without). bench/compile.py measures the compile
of SmolLM2's steps."""
import os
import re

import mindformers

SLOW = {"arange": "layers.arange", "full": "layers.full", "full_like": "layers.full", "fill": "layers.full",
        "cross_entropy": "layers._mean_cross_entropy"}
CALL = re.compile(r"\bops\.(" + "|".join(SLOW) + r")\(")


def test_no_slow_compiling_ops_in_the_package():
    root = os.path.dirname(mindformers.__file__)
    found = []
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    for number, line in enumerate(f, 1):
                        code = line.split("#", 1)[0]
                        found += [f"{os.path.relpath(path, root)}:{number}: ops.{m} (use {SLOW[m]})"
                                  for m in CALL.findall(code)]
    assert not found, "\n".join(found)


def test_replacements_equal_the_ops():
    import numpy as np
    import mindspore as ms
    from mindspore import Tensor, ops

    from mindformers.models.common.layers import _mean_cross_entropy, arange, full

    assert arange(3, 7).dtype == ms.int32 and arange(3, 7).asnumpy().tolist() == [3, 4, 5, 6]
    assert arange(0, 2, ms.int64).dtype == ms.int64
    filled = full((2, 3), -100, ms.int32)
    assert filled.dtype == ms.int32 and (filled.asnumpy() == -100).all()
    assert (full((2,), float(np.finfo(np.float32).min), ms.float32).asnumpy() == np.finfo(np.float32).min).all()
    rng = np.random.default_rng(0)
    logits = Tensor(rng.standard_normal((6, 11)).astype(np.float32))
    labels = Tensor(np.array([3, -100, 0, 10, -100, 5], np.int32))
    expected = ops.cross_entropy(logits, labels, ignore_index=-100, reduction="sum").asnumpy() / 4
    np.testing.assert_allclose(_mean_cross_entropy(logits, labels).asnumpy(), expected, rtol=1e-6)
    # no scored label: 0, not NaN
    assert float(_mean_cross_entropy(logits, Tensor(np.full(6, -100, np.int32))).asnumpy()) == 0.0
