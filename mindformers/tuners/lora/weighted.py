"""``add_weighted_adapter``: a new LoRA adapter combining existing ones (PEFT 0.21's three exact methods).

With ``s_i`` the scaling and ``w_i`` the weight of adapter i, and the new adapter's alpha equal to its rank:
- ``cat``: rank sum(r_i); A = [w_i s_i A_i] stacked by rows, B = [B_i] side by side, so
  B A = sum_i w_i s_i B_i A_i exactly. Modules targeted by only some adapters keep zeros in the rest.
- ``linear`` (equal ranks): A = sum_i sign_i sqrt(|w_i s_i|) A_i, B = sum_i sqrt(|w_i s_i|) B_i, an
  approximation (cross terms remain).
- ``svd``: the rank-k truncated SVD of sum_i w_i s_i B_i A_i (k = svd_rank or the largest rank):
  B = U_k diag(S_k), A = V_k^T.
"""
import dataclasses
from typing import List, Optional

import numpy as np

from .layer import LoraEmbedding, _set
from .model import lora_layers

COMBINATIONS = ("linear", "cat", "svd")


def _factors(layer, name):
    if isinstance(layer, LoraEmbedding):
        return layer.lora_embedding_A[name].weight, layer.lora_embedding_B[name].weight
    return layer.lora_A[name].weight, layer.lora_B[name].weight


def add_weighted_adapter(tuner, adapters: List[str], weights: List[float], adapter_name: str,
                         combination_type: str = "svd", svd_rank: Optional[int] = None) -> None:
    """Create ``adapter_name`` on ``tuner`` (a TunerModel) from ``adapters`` weighted by ``weights``."""
    if combination_type not in COMBINATIONS:
        raise ValueError(f"combination_type must be one of {COMBINATIONS} (the TIES/DARE variants are not "
                         f"supported), found {combination_type!r}")
    if len(weights) != len(adapters):
        raise ValueError(f"got {len(weights)} weights for {len(adapters)} adapters")
    configs = [tuner.peft_config[a] for a in adapters]
    if any(c.use_dora for c in configs):
        raise ValueError("adapters using DoRA cannot be combined (their magnitudes do not add)")
    if len(adapters) == 1:
        combination_type = "linear"
    ranks = [max([c.r, *c.rank_pattern.values()]) for c in configs]
    if combination_type == "linear":
        if len(set(ranks)) != 1:
            raise ValueError(f"combination_type 'linear' needs adapters of equal rank, found ranks {ranks}; "
                             "use 'cat' or 'svd'")
        new_rank = ranks[0]
    elif combination_type == "cat":
        new_rank = sum(ranks)
    else:
        new_rank = svd_rank or max(ranks)
    kinds = {isinstance(c.target_modules, str) for c in configs}
    if len(kinds) > 1:
        raise ValueError("cannot combine adapters whose target_modules mix a regex string and lists")
    if kinds == {True}:
        targets = "|".join(f"({c.target_modules})" for c in configs)
    else:
        targets = sorted(set().union(*(c.target_modules for c in configs)))
    config = dataclasses.replace(configs[0], r=new_rank, lora_alpha=new_rank, target_modules=targets,
                                 rank_pattern={}, alpha_pattern={}, inference_mode=True)
    tuner.add_adapter(adapter_name, config)

    for layer in lora_layers(tuner.base_model).values():
        if adapter_name not in layer.adapter_names:
            continue
        present = [(a, w) for a, w in zip(adapters, weights) if a in layer.adapter_names]
        target_a, target_b = _factors(layer, adapter_name)
        if combination_type == "cat":
            a = np.concatenate([_factors(layer, n)[0].asnumpy() * w * layer.scaling[n] for n, w in present], 0)
            b = np.concatenate([_factors(layer, n)[1].asnumpy() for n, w in present], 1)
            new_a, new_b = np.zeros(target_a.shape), np.zeros(target_b.shape)
            new_a[: a.shape[0]], new_b[:, : b.shape[1]] = a, b
        elif combination_type == "linear":
            # the sign of a negative weight goes on A only, or it would cancel out in B A
            new_a = sum((1.0 if w * layer.scaling[n] >= 0 else -1.0) * np.sqrt(abs(w * layer.scaling[n]))
                        * _factors(layer, n)[0].asnumpy().astype(np.float64) for n, w in present)
            new_b = sum(np.sqrt(abs(w * layer.scaling[n])) * _factors(layer, n)[1].asnumpy().astype(np.float64)
                        for n, w in present)
        else:
            delta = sum(w * layer._delta(n) for n, w in present)  # [out, in] (embeddings: [num, dim])
            if isinstance(layer, LoraEmbedding):
                delta = delta.T  # factor as B [dim, r] @ A [r, num]
            u, s, vh = np.linalg.svd(delta, full_matrices=True)
            new_b, new_a = u[:, :new_rank] * s[:new_rank], vh[:new_rank]
        _set(target_a, new_a)
        _set(target_b, new_b)
