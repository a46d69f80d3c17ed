"""Checks of checkpoint values before they go into a model: float dtypes, and no NaN or infinity.

A checkpoint of integers (a file of token ids or a quantised export saved under the weights' name) or one
holding NaN/Inf (a training run that diverged) would load silently and give garbage or NaN outputs; these
checks name the tensors instead. Both loaders (the model's and the tuners') use them.
"""
from typing import Dict, List

import numpy as np


def _is_float(dtype: np.dtype) -> bool:
    # bfloat16 (registered with numpy by MindSpore, which safetensors then returns) is no np.floating subtype
    return np.issubdtype(dtype, np.floating) or dtype.name == "bfloat16"


def non_float_tensors(state: Dict[str, np.ndarray]) -> List[str]:
    """``"name: int32"`` for every tensor of ``state`` that is not floating point."""
    return [f"{name}: {np.asarray(value).dtype}" for name, value in state.items()
            if not _is_float(np.asarray(value).dtype)]


def nonfinite_tensors(state: Dict[str, np.ndarray]) -> List[str]:
    """``"name: 1 NaN, 2 Inf of 256 values"`` for every floating-point tensor holding NaN or +-infinity."""
    found = []
    for name, value in state.items():
        value = np.asarray(value)
        if not _is_float(value.dtype) or np.isfinite(value).all():
            continue
        nan = int(np.isnan(value).sum())
        inf = int(np.isinf(value).sum())
        found.append(f"{name}: {nan} NaN, {inf} Inf of {value.size} values")
    return found
