"""Reading and writing weights: Hugging Face safetensors directories and llama.cpp GGUF files."""
from .gguf import load_gguf, read_gguf, read_gguf_config, read_gguf_metadata
from .safetensors_dir import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, load_state_dict, save_state_dict

__all__ = [
    "SAFE_WEIGHTS_INDEX_NAME", "SAFE_WEIGHTS_NAME", "load_gguf", "load_state_dict", "read_gguf", "read_gguf_config",
    "read_gguf_metadata", "save_state_dict",
]
