"""llama.cpp GGUF checkpoints of the Llama family, dequantised to float32 with the ``gguf`` package.

GGUF spec: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md. Tensor names follow llama.cpp
(``blk.{i}.attn_q.weight``); they are mapped to Hugging Face names here.

Warning: llama.cpp's converter permutes the rows of ``attn_q``/``attn_k`` from Hugging Face's "rotate half"
RoPE layout to its interleaved one; :func:`_unpermute` undoes that, or attention is silently wrong.
"""
import functools
import os
import re
from typing import Any, Dict, Tuple

import numpy as np

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


def gguf_reader(path: str):
    """A ``gguf.GGUFReader`` for ``path``, shared within the process.

    Parsing the metadata of a file with a 49k-token vocabulary takes ~9 s in the ``gguf`` package, and
    the config, the weights and the tokenizer all need it; the reader is reused while the file is
    unchanged.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file not found: {path}")
    stat = os.stat(path)
    return _cached_reader(os.path.realpath(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _cached_reader(path: str, mtime_ns: int, size: int):
    import gguf

    try:
        return gguf.GGUFReader(path)
    except Exception as err:  # the reader raises ValueError/struct.error/IndexError on damage
        raise ValueError(f"cannot read {path}: not a valid GGUF file (corrupt or truncated?): {err}") from None


def _field(reader, key: str, default: Any = None) -> Any:
    found = reader.fields.get(key)
    return default if found is None else found.contents()


def read_gguf_config(path: str, reader=None) -> Dict[str, Any]:
    """The Hugging Face style config dict (``model_type`` included) stored in a GGUF file's metadata."""
    reader = reader or gguf_reader(path)
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"{path}: GGUF architecture {arch!r} is not supported; supported: {SUPPORTED_ARCHITECTURES}")
    config: Dict[str, Any] = {"model_type": arch}
    for key, name in _CONFIG_KEYS.items():
        value = _field(reader, f"{arch}.{key}")
        if isinstance(value, float):  # stored as float32: 1e-5 reads back as 9.99999974e-06
            value = float(str(np.float32(value)))
        if value is not None:
            config[name] = value
    if "vocab_size" not in config and "tokenizer.ggml.tokens" in reader.fields:
        config["vocab_size"] = len(reader.fields["tokenizer.ggml.tokens"].data)
    config["tie_word_embeddings"] = not any(t.name == "output.weight" for t in reader.tensors)
    for name in ("bos", "eos", "padding"):
        value = _field(reader, f"tokenizer.ggml.{name}_token_id")
        if value is not None:
            config["pad_token_id" if name == "padding" else f"{name}_token_id"] = int(value)
    if _field(reader, f"{arch}.rope.scaling.type") not in (None, "none"):
        raise ValueError(f"{path}: GGUF rope scaling {_field(reader, f'{arch}.rope.scaling.type')!r} is not supported")
    return config


def _unpermute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Invert llama.cpp's ``permute``: [heads, head_dim/2, 2, in] -> [heads, 2, head_dim/2, in]."""
    out_dim = weight.shape[0]
    return weight.reshape(n_heads, out_dim // n_heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def load_gguf(path: str) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """Read a GGUF Llama checkpoint.

    Returns:
        ``(config dict, {Hugging Face tensor name: float32 array})``.
    """
    import gguf

    reader = gguf_reader(path)
    config = read_gguf_config(path, reader)
    state: Dict[str, np.ndarray] = {}
    for tensor in reader.tensors:
        if tensor.name == "rope_freqs.weight":  # llama3 scaling factors; the config's rope_scaling rebuilds them
            continue
        match = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", tensor.name)
        if match:
            layer, kind, suffix = match.groups()
            if kind not in _LAYER_NAMES:
                raise ValueError(f"{path}: unexpected GGUF tensor {tensor.name!r}")
            name = f"model.layers.{layer}.{_LAYER_NAMES[kind]}.{suffix}"
        elif tensor.name in _GLOBAL_NAMES:
            name = _GLOBAL_NAMES[tensor.name]
        else:
            raise ValueError(f"{path}: unexpected GGUF tensor {tensor.name!r}")
        array = np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        if name.endswith("q_proj.weight") or name.endswith("q_proj.bias"):
            array = _unpermute(array, config["num_attention_heads"])
        elif name.endswith("k_proj.weight") or name.endswith("k_proj.bias"):
            array = _unpermute(array, config.get("num_key_value_heads", config["num_attention_heads"]))
        state[name] = array
    return config, state
