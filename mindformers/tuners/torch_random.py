"""Torch's CPU random streams, reproduced with numpy, for the PEFT methods that build tensors from a seed instead
of saving them (VeRA's shared projections, FourierFT's spectral locations).

``torch.Generator().manual_seed(s)`` on the CPU is a 32-bit Mersenne Twister (``at::mt19937``) seeded with
``s & 0xFFFFFFFF`` by the standard ``init_genrand``, which is also what ``numpy.random.RandomState(int)`` does;
each ``generator->random()`` is one 32-bit output. On top of that stream (aten/src/ATen/core/
DistributionsHelper.h, TransformationHelper.h and native/TensorFactories.cpp, torch 2.x):

- ``tensor.uniform_(a, b, generator)`` (float32): one draw per element in order,
  ``float((draw & (2^24 - 1)) * 2^-24 * (double(b') - double(a')) + double(a'))`` with ``a', b'`` the bounds
  rounded to float32 first;
- ``torch.randperm(n, generator)`` for ``n < 2^32 / 20``: ``[0..n)`` shuffled forward, step ``i`` swapping
  ``i`` with ``i + draw % (n - i)``; the first ``k`` entries are final after ``k`` steps.

Both match torch bit for bit (tests/tuners/test_vera.py and test_fourierft.py check them against torch's
output saved in tests/fixtures/peft_methods/torch_random.npz).
"""
from typing import Dict, Tuple

import numpy as np

RANDPERM_LIMIT = (2 ** 32 - 1) // 20  # torch's randperm_cpu switches algorithm at n >= this


class TorchGenerator:
    """The 32-bit draws of ``torch.Generator(device="cpu").manual_seed(seed)``, consumed in order.

    Args:
        seed: the seed given to ``manual_seed`` (only its low 32 bits matter, as in torch).
    """

    def __init__(self, seed: int):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"a torch generator seed is an integer, found {seed!r}")
        self._state = np.random.RandomState(int(seed) & 0xFFFFFFFF)

    def random(self, count: int) -> np.ndarray:
        """The next ``count`` 32-bit outputs (``generator->random()``) as uint32."""
        return self._state.randint(0, 2 ** 32, size=count, dtype=np.uint32)

    def uniform(self, shape: Tuple[int, ...], low: float, high: float) -> np.ndarray:
        """``torch.empty(shape).uniform_(low, high, generator=self)`` (float32)."""
        draws = self.random(int(np.prod(shape)))
        unit = (draws & np.uint32(2 ** 24 - 1)).astype(np.float64) * 2.0 ** -24
        low64, high64 = float(np.float32(low)), float(np.float32(high))
        return (unit * (high64 - low64) + low64).astype(np.float32).reshape(shape)


def randperm_prefix(n: int, k: int, seed: int) -> np.ndarray:
    """``torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k]`` (int64), in O(k).

    Raises:
        ValueError: ``k`` outside [0, n], or ``n`` past the size where torch uses another algorithm.
    """
    if not 0 <= k <= n:
        raise ValueError(f"randperm prefix of {k} entries from {n} elements")
    if n >= RANDPERM_LIMIT:
        raise ValueError(f"torch.randperm({n}) uses an algorithm this module does not reproduce (n >= {RANDPERM_LIMIT})")
    draws = TorchGenerator(seed).random(min(k, n - 1))
    moved: Dict[int, int] = {}  # the positions the shuffle has written so far (the rest still hold their index)
    out = np.empty(k, dtype=np.int64)
    for i in range(k):
        if i == n - 1:  # the last element is never swapped
            out[i] = moved.get(i, i)
            break
        j = i + int(draws[i]) % (n - i)
        out[i], moved[j] = moved.get(j, j), moved.get(i, i)
    return out
