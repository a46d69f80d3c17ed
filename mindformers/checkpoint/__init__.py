"""Reading and writing weights: Hugging Face safetensors directories and llama.cpp GGUF files."""
from .gguf import gguf_reader, load_gguf, read_gguf_config
from .safetensors_dir import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, load_state_dict, save_state_dict

__all__ = [
    "SAFE_WEIGHTS_INDEX_NAME", "SAFE_WEIGHTS_NAME", "gguf_reader", "load_gguf", "load_state_dict", "read_gguf_config",
    "save_state_dict",
]
