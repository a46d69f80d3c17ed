"""Fused kernels behind one function each, with MindSpore's generic ops as the path everywhere else.

``host``: C++ loops for the CPU (AdamW, squared norms, softmax cross entropy with its gradient, SwiGLU and
rotary embeddings with their gradients, KV-cache writes in place, the serving engine's multi-LoRA product),
compiled once per machine (``python -m mindformers.kernels`` builds them; see host.py).
"""
from . import host

__all__ = ["host"]
