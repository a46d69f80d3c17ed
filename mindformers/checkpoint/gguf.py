"""llama.cpp GGUF checkpoints of the Llama family, dequantised to float32 with the ``gguf`` package.

GGUF spec: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md. The file is a header, key/value
metadata, a tensor table (name, dims, ggml type, offset) and aligned tensor data. We parse the header and
tables ourselves with ``struct`` (~0.1 s; ``gguf.GGUFReader`` indexes every vocabulary string as a numpy
view and takes ~9 s on SmolLM2's 49k-token file) and leave the quantisation formats to
``gguf.quants.dequantize``. Tensor names follow llama.cpp (``blk.{i}.attn_q.weight``) and are mapped to
Hugging Face names.

Warning: llama.cpp's converter permutes the rows of ``attn_q``/``attn_k`` from Hugging Face's "rotate half"
RoPE layout to its interleaved one; :func:`_unpermute` undoes that, or attention is silently wrong.
"""
import mmap
import os
import re
import struct
from typing import Any, Dict, List, NamedTuple, Tuple

import numpy as np

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# GGUF value types -> struct format ("gguf_metadata_value_type" in the spec); 8 is a string, 9 an array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
# llama.cpp metadata key (after "<arch>.") -> Hugging Face config field
_CONFIG_KEYS = {
    "block_count": "num_hidden_layers",
    "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "rope.freq_base": "rope_theta",
    "context_length": "max_position_embeddings",
    "vocab_size": "vocab_size",
    "rope.dimension_count": "head_dim",
}
SUPPORTED_ARCHITECTURES = ("llama",)


class TensorInfo(NamedTuple):
    """One entry of the tensor table: ``dims`` in GGUF order (fastest-varying first)."""

    name: str
    dims: Tuple[int, ...]
    ggml_type: int
    offset: int  # from the start of the file


class GGUFFile(NamedTuple):
    metadata: Dict[str, Any]
    tensors: List[TensorInfo]


def read_gguf(path: str, with_tensors: bool = True) -> GGUFFile:
    """Parse a GGUF file's metadata (and tensor table) without touching the tensor data.

    Args:
        path: the ``.gguf`` file (versions 2 and 3, little-endian).
        with_tensors: also read the tensor table.
    Returns:
        ``GGUFFile(metadata, tensors)``; metadata arrays are Python lists, strings ``str``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file not found: {path}")
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ValueError(f"{path} is not a GGUF file (it does not start with b'GGUF')")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        version, tensor_count, kv_count = struct.unpack_from("<IQQ", buf, 4)
        if version not in (2, 3):
            raise ValueError(f"{path}: GGUF version {version} is not supported (expected 2 or 3)")

        def string(at: int) -> Tuple[str, int]:
            (size,) = struct.unpack_from("<Q", buf, at)
            if at + 8 + size > len(buf):
                raise struct.error(f"string of {size} bytes runs past the end of the file")
            return buf[at + 8 : at + 8 + size].decode("utf-8"), at + 8 + size

        def value(kind: int, at: int) -> Tuple[Any, int]:
            if kind in _SCALARS:
                fmt = "<" + _SCALARS[kind]
                return struct.unpack_from(fmt, buf, at)[0], at + struct.calcsize(fmt)
            if kind == _STRING:
                return string(at)
            if kind == _ARRAY:
                item_kind, count = struct.unpack_from("<IQ", buf, at)
                at += 12
                if item_kind in _SCALARS:
                    size = struct.calcsize("<" + _SCALARS[item_kind])
                    return list(struct.unpack_from(f"<{count}{_SCALARS[item_kind]}", buf, at)), at + count * size
                items = []
                for _ in range(count):
                    item, at = value(item_kind, at)
                    items.append(item)
                return items, at
            raise ValueError(f"{path}: unknown GGUF value type {kind} at byte {at}")

        pos, metadata = 24, {}
        for _ in range(kv_count):
            key, pos = string(pos)
            (kind,) = struct.unpack_from("<I", buf, pos)
            metadata[key], pos = value(kind, pos + 4)
        tensors: List[TensorInfo] = []
        if with_tensors:
            table = []
            for _ in range(tensor_count):
                name, pos = string(pos)
                (n_dims,) = struct.unpack_from("<I", buf, pos)
                dims = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
                ggml_type, offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * n_dims)
                pos += 4 + 8 * n_dims + 12
                table.append((name, dims, ggml_type, offset))
            alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
            data_start = (pos + alignment - 1) // alignment * alignment
            tensors = [TensorInfo(n, tuple(d), t, data_start + o) for n, d, t, o in table]
        return GGUFFile(metadata, tensors)
    except struct.error as exc:
        raise ValueError(f"cannot read {path}: not a valid GGUF file (corrupt or truncated?): {exc}") from None
    finally:
        buf.close()


def read_gguf_metadata(path: str) -> Dict[str, Any]:
    """The key/value metadata of a GGUF file (see :func:`read_gguf`)."""
    return read_gguf(path, with_tensors=False).metadata


def read_gguf_config(path: str, metadata: Dict[str, Any] = None, has_output: bool = None) -> Dict[str, Any]:
    """The Hugging Face style config dict (``model_type`` included) stored in a GGUF file's metadata."""
    if metadata is None:
        gguf_file = read_gguf(path)
        metadata, has_output = gguf_file.metadata, any(t.name == "output.weight" for t in gguf_file.tensors)
    arch = metadata.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"{path}: GGUF architecture {arch!r} is not supported; supported: {SUPPORTED_ARCHITECTURES}")
    config: Dict[str, Any] = {"model_type": arch}
    for key, name in _CONFIG_KEYS.items():
        value = metadata.get(f"{arch}.{key}")
        if isinstance(value, float):  # stored as float32: 1e-5 reads back as 9.99999974e-06
            value = float(str(np.float32(value)))
        if value is not None:
            config[name] = value
    if "vocab_size" not in config and "tokenizer.ggml.tokens" in metadata:
        config["vocab_size"] = len(metadata["tokenizer.ggml.tokens"])
    config["tie_word_embeddings"] = not has_output
    for name in ("bos", "eos", "padding"):
        value = metadata.get(f"tokenizer.ggml.{name}_token_id")
        if value is not None:
            config["pad_token_id" if name == "padding" else f"{name}_token_id"] = int(value)
    scaling = metadata.get(f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        raise ValueError(f"{path}: GGUF rope scaling {scaling!r} is not supported")
    return config


def _unpermute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Invert llama.cpp's ``permute``: [heads, head_dim/2, 2, in] -> [heads, 2, head_dim/2, in]."""
    out_dim = weight.shape[0]
    return weight.reshape(n_heads, out_dim // n_heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _hf_name(path: str, gguf_name: str) -> str:
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
    if match and match.group(2) in _LAYER_NAMES:
        layer, kind, suffix = match.groups()
        return f"model.layers.{layer}.{_LAYER_NAMES[kind]}.{suffix}"
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    raise ValueError(f"{path}: unexpected GGUF tensor {gguf_name!r} for a Llama checkpoint")


def _dequantize(buf, info: TensorInfo, path: str) -> np.ndarray:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize

    qtype = GGMLQuantizationType(info.ggml_type)
    block, type_size = GGML_QUANT_SIZES[qtype]
    shape = tuple(reversed(info.dims))  # numpy order: slowest-varying first
    nbytes = int(np.prod(info.dims)) // block * type_size
    if info.offset + nbytes > len(buf):
        raise ValueError(f"cannot read {path}: tensor {info.name} runs past the end of the file (truncated?)")
    raw = np.frombuffer(buf, dtype=np.uint8, count=nbytes, offset=info.offset)
    raw = raw.reshape(shape[:-1] + (shape[-1] // block * type_size,))
    return np.array(dequantize(raw, qtype), dtype=np.float32).reshape(shape)


def load_gguf(path: str) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """Read a GGUF Llama checkpoint.

    Returns:
        ``(config dict, {Hugging Face tensor name: float32 array})``.
    """
    gguf_file = read_gguf(path)
    has_output = any(t.name == "output.weight" for t in gguf_file.tensors)
    config = read_gguf_config(path, gguf_file.metadata, has_output)
    state: Dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        for info in gguf_file.tensors:
            if info.name == "rope_freqs.weight":  # llama3 scaling factors; the config's rope_scaling rebuilds them
                continue
            name = _hf_name(path, info.name)
            array = _dequantize(buf, info, path)
            if name.startswith("model.layers.") and ".q_proj." in name:
                array = _unpermute(array, config["num_attention_heads"])
            elif name.startswith("model.layers.") and ".k_proj." in name:
                array = _unpermute(array, config.get("num_key_value_heads", config["num_attention_heads"]))
            state[name] = array
    finally:
        buf.close()
    return config, state
