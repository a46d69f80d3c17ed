"""Hugging Face's weight layout: ``model.safetensors``, or shards listed in ``model.safetensors.index.json``.

Format: https://huggingface.co/docs/safetensors (header + raw tensors) and transformers'
``save_pretrained`` (shards ``model-00001-of-00003.safetensors`` and an index
``{"metadata": {"total_size": bytes}, "weight_map": {tensor name: shard file}}``).
"""
import json
import os
import re
from typing import Dict, List, Union

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from ..utils import atomic_path, atomic_write_text

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
_SHARD_RE = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")


def _read_file(path: str) -> Dict[str, np.ndarray]:
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(
            f"cannot read {path}: it is not a valid safetensors file (corrupt or truncated?): {err}"
        ) from None


def load_state_dict(path: str) -> Dict[str, np.ndarray]:
    """Load every tensor of a checkpoint as numpy arrays.

    Args:
        path: a directory holding ``model.safetensors`` or a sharded index, or a ``.safetensors`` file.
    Returns:
        ``{tensor name: array}``.
    """
    if os.path.isfile(path):
        return _read_file(path)
    single = os.path.join(path, SAFE_WEIGHTS_NAME)
    index = os.path.join(path, SAFE_WEIGHTS_INDEX_NAME)
    if os.path.isfile(single):
        return _read_file(single)
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise ValueError(f"{index} is not a valid safetensors index (expected a 'weight_map'): {err}") from None
        state: Dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = os.path.join(path, shard)
            if not os.path.isfile(shard_path):
                raise FileNotFoundError(f"{index} lists the shard {shard}, which is missing from {path}")
            state.update(_read_file(shard_path))
        missing = sorted(set(weight_map) - set(state))
        if missing:
            raise ValueError(f"tensors listed in {index} are absent from their shards: {missing[:10]}")
        return state
    found = sorted(os.listdir(path)) if os.path.isdir(path) else []
    raise FileNotFoundError(
        f"no weights in {path}: expected {SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME}; found {found}"
    )


def _parse_size(size: Union[int, str]) -> int:
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B)\s*", size.upper())
    if not match:
        raise ValueError(f"max_shard_size must be an int or like '5GB' / '200MB', found {size!r}")
    return int(float(match.group(1)) * {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}[match.group(2)])


def save_state_dict(state: Dict[str, np.ndarray], directory: str, max_shard_size: Union[int, str] = "5GB") -> List[str]:
    """Write ``state`` into ``directory`` as one file or as shards plus an index, each file atomically.

    Shards of an earlier save that the new layout no longer uses are removed only after the new files
    are in place, so an interrupted save leaves the previous checkpoint loadable.

    Returns:
        The paths written.
    """
    os.makedirs(directory, exist_ok=True)
    limit = _parse_size(max_shard_size)
    shards: List[Dict[str, np.ndarray]] = [{}]
    size = 0
    for name in state:  # keep the caller's (module) order, as transformers does
        array = np.require(state[name], requirements="C")  # ascontiguousarray would make a 0-d tensor [1]
        if shards[-1] and size + array.nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = array
        size += array.nbytes
    written = []
    metadata = {"format": "pt"}  # transformers refuses files without a known framework tag
    if len(shards) == 1:
        names = [SAFE_WEIGHTS_NAME]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        path = os.path.join(directory, name)
        with atomic_path(path) as tmp:
            save_file(shard, tmp, metadata=metadata)
        written.append(path)
    index_path = os.path.join(directory, SAFE_WEIGHTS_INDEX_NAME)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": int(sum(a.nbytes for a in state.values()))},
            "weight_map": {tensor: name for name, shard in zip(names, shards) for tensor in shard},
        }
        atomic_write_text(index_path, json.dumps(index, indent=2, sort_keys=True) + "\n")
        written.append(index_path)
    # Drop files of a previous save with another layout (they would shadow or confuse the new one).
    stale = [SAFE_WEIGHTS_INDEX_NAME] if len(shards) == 1 else [SAFE_WEIGHTS_NAME]
    stale += [f for f in os.listdir(directory) if _SHARD_RE.match(f) and f not in names]
    for f in stale:
        if os.path.exists(os.path.join(directory, f)):
            os.remove(os.path.join(directory, f))
    return written
