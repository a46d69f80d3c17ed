"""AdaLoRA's rank allocation (PEFT 0.21's ``RankAllocator`` and ``AdaLoraModel.update_and_allocate``), on arrays.

After every optimizer step, each entry of A, E and B gets a sensitivity ``|w * grad|``, smoothed by an EMA
(beta1) and weighed by the EMA of its deviation (beta2, the uncertainty). A triplet's score is its E entry's plus
the mean over its row of A and its column of B. The budget (total kept triplets) falls from init_r x layers to
target_r x layers on a cubic schedule between ``tinit`` and ``total_step - tfinal``; every ``deltaT`` steps the
lowest-scoring triplets beyond the budget get E = 0. At ``total_step - tfinal`` the allocation is fixed (the
``rank_pattern``) and re-applied after every later step.

Computed in float32 in PEFT's order, so the same weights and gradients give PEFT's masks exactly.
"""
from typing import Dict, Optional, Tuple

import numpy as np

Triplet = Dict[str, np.ndarray]  # "lora_A" [r, in], "lora_E" [r, 1], "lora_B" [out, r]


class RankAllocator:
    """Importance scores and budget of one AdaLoRA adapter.

    Args:
        config: the adapter's :class:`~mindformers.tuners.adalora.config.AdaLoraConfig`.
        ranks: module path -> its initial rank (every adapted layer).
    """

    def __init__(self, config, ranks: Dict[str, int]):
        self.config = config
        self.modules = sorted(ranks)
        self.init_bgt = int(sum(ranks.values()))
        self.target_bgt = config.target_r * len(self.modules)
        self.reset_ipt()

    def reset_ipt(self) -> None:
        self.exp_avg_ipt: Dict[Tuple[str, str], np.ndarray] = {}
        self.exp_avg_unc: Dict[Tuple[str, str], np.ndarray] = {}

    def budget_schedule(self, step: int) -> Tuple[int, bool]:
        """(budget, whether to mask at ``step``)."""
        c = self.config
        if step <= c.tinit:
            return self.init_bgt, False
        if step > c.total_step - c.tfinal:
            return self.target_bgt, True
        mul_coeff = 1 - (step - c.tinit) / (c.total_step - c.tfinal - c.tinit)
        return int((self.init_bgt - self.target_bgt) * (mul_coeff ** 3) + self.target_bgt), step % c.deltaT == 0

    def update_ipt(self, weights: Dict[str, Triplet], grads: Dict[str, Triplet]) -> None:
        """Fold one step's sensitivities into the EMAs (``weights`` after the step, its ``grads``)."""
        # torch casts each Python scalar to float32: 1 - beta is taken in float64 first, as PEFT writes it
        beta1, beta2 = np.float32(self.config.beta1), np.float32(self.config.beta2)
        rest1, rest2 = np.float32(1 - self.config.beta1), np.float32(1 - self.config.beta2)
        for module in self.modules:
            for slot, w in weights[module].items():
                key = (module, slot)
                ipt = np.abs(w.astype(np.float32) * grads[module][slot].astype(np.float32))
                avg = self.exp_avg_ipt.get(key, np.zeros_like(ipt))
                unc = self.exp_avg_unc.get(key, np.zeros_like(ipt))
                avg = beta1 * avg + rest1 * ipt
                self.exp_avg_ipt[key] = avg
                self.exp_avg_unc[key] = beta2 * unc + rest2 * np.abs(ipt - avg)

    def scores(self) -> Dict[str, np.ndarray]:
        """Module -> the score of each of its triplets [r]."""
        out = {}
        for module in self.modules:
            s = {slot: self.exp_avg_ipt[(module, slot)] * self.exp_avg_unc[(module, slot)]
                 for slot in ("lora_A", "lora_E", "lora_B")}
            a, b = s["lora_A"].mean(axis=1), s["lora_B"].mean(axis=0)
            out[module] = s["lora_E"].reshape(-1) + (a + b)
        return out

    def mask_to_budget(self, budget: int) -> Dict[str, np.ndarray]:
        """Module -> kept triplets: all but the ``init_bgt - budget`` lowest scores (ties at the threshold go)."""
        scores = self.scores()
        k = self.init_bgt - budget
        if k <= 0:  # nothing to prune (PEFT's kthvalue would refuse k = 0)
            return {module: np.ones(len(s), bool) for module, s in scores.items()}
        threshold = np.partition(np.concatenate(list(scores.values())), k - 1)[k - 1]
        return {module: ~(s <= threshold) for module, s in scores.items()}

    def step(self, weights: Dict[str, Triplet], grads: Dict[str, Triplet], global_step: int,
             pattern: Optional[Dict[str, np.ndarray]]) -> Optional[Dict[str, np.ndarray]]:
        """PEFT's ``update_and_allocate(global_step)``: the masks to apply after this step (module -> kept
        triplets), or None. ``pattern``: the allocation fixed so far (re-applied in the final phase)."""
        c = self.config
        final = c.total_step - c.tfinal
        if global_step < final:
            self.update_ipt(weights, grads)
            budget, mask_ind = self.budget_schedule(global_step)
            return self.mask_to_budget(budget) if mask_ind else None
        if global_step == final:
            masks = self.mask_to_budget(self.budget_schedule(global_step)[0])
            self.reset_ipt()
            return masks
        return pattern
