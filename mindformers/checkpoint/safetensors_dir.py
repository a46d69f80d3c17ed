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
        with open(path, "rb") as f:
            start = f.read(64)
        if start.startswith(b"version https://git-lfs"):  # a clone without `git lfs pull`
            raise ValueError(f"cannot read {path}: it is a Git LFS pointer, not the weights; fetch them with "
                             "`git lfs pull` in the checkpoint's repository") from None
        raise ValueError(
            f"cannot read {path}: it is not a valid safetensors file (corrupt or truncated?): {err}"
        ) from None
    except (TypeError, AttributeError):  # a dtype numpy has no type for (F8_*): safetensors.numpy fails on it
        raise ValueError(f"cannot read {path}: tensor(s) of a dtype numpy cannot hold: {_exotic_tensors(path)}; "
                         "expected float tensors (F32, F16, BF16 or F64): convert the checkpoint to one") from None


def _exotic_tensors(path: str) -> List[str]:
    """``"name: dtype"`` of the tensors in ``path`` (a valid safetensors file) whose dtype numpy has no type for.
    bfloat16 has one once MindSpore is imported (it registers it; safetensors then returns bfloat16 arrays)."""
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    header.pop("__metadata__", None)
    readable = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL"}
    return [f"{name}: {info['dtype']}" for name, info in header.items() if info["dtype"] not in readable]


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
                data = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{index} is not valid JSON: {err}") from None
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict):
            found = f"keys {sorted(data)}" if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{index} is not a valid safetensors index: expected a 'weight_map' object "
                             f"(tensor name -> shard file), found {found}")
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
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise NotADirectoryError(f"cannot save into {directory}: it is a file; weights are saved into a directory "
                                 "(model.safetensors, config.json); pass a directory path")
    limit = _parse_size(max_shard_size)  # before anything is written: a bad size leaves the directory as it was
    os.makedirs(directory, exist_ok=True)
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
