"""mindformers.tuners.torch_random reproduces torch's CPU generator bit for bit: ``torch.randperm`` prefixes
(FourierFT's frequencies) and VeRA's Kaiming-uniform projections, against torch's own output saved by
tests/fixtures/peft_methods/make_reference.py (torch_random.npz)."""
import math
import os

import numpy as np
import pytest

from mindformers.tuners.torch_random import RANDPERM_LIMIT, TorchGenerator, randperm_prefix
from tests.conftest import FIXTURES

TORCH = np.load(os.path.join(FIXTURES, "peft_methods", "torch_random.npz"))


def test_randperm_prefixes_equal_torch():
    keys = [k for k in TORCH.files if k.startswith("randperm_")]
    assert len(keys) == 6  # n from 1 to 884736, seeds past 2**32 included (torch keeps the low 32 bits)
    for key in keys:
        n, k, seed = map(int, key.split("_")[1:])
        np.testing.assert_array_equal(randperm_prefix(n, k, seed), TORCH[key])
    full = randperm_prefix(8192, 8192, 123)
    assert sorted(full) == list(range(8192))  # a permutation


def test_kaiming_uniform_stream_equals_torch():
    keys = [k for k in TORCH.files if k.startswith("vera_A_")]
    assert len(keys) == 3
    for key in keys:
        r, fan_in, out, seed = map(int, key.split("_")[2:])
        generator = TorchGenerator(seed)  # A then B continue one stream, as in PEFT
        bound = math.sqrt(3.0) * (math.sqrt(2) / math.sqrt(fan_in))
        np.testing.assert_array_equal(generator.uniform((r, fan_in), -bound, bound), TORCH[key])
        bound = math.sqrt(3.0) * (math.sqrt(2) / math.sqrt(r))
        np.testing.assert_array_equal(generator.uniform((out, r), -bound, bound), TORCH[key.replace("_A_", "_B_")])


def test_out_of_range_is_named():
    with pytest.raises(ValueError, match="randperm prefix of 5 entries from 4 elements"):
        randperm_prefix(4, 5, 0)
    with pytest.raises(ValueError, match="uses an algorithm this module does not reproduce"):
        randperm_prefix(RANDPERM_LIMIT, 1, 0)
    with pytest.raises(TypeError, match="seed is an integer, found None"):
        TorchGenerator(None)
