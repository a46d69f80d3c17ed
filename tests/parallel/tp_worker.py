"""One worker of the tensor-parallel tests (tests/parallel/test_tensor_parallel.py), started by msrun on CPU.

    msrun --worker_num=2 ... tests/parallel/tp_worker.py families OUT
        each family's reference model split over the 2 workers (model_parallel=2): loss and every gradient
        slice compared with the whole model's in the same process -> OUT/families_rank<r>.json
    msrun --worker_num=N ... tests/parallel/tp_worker.py train OUT DATA KIND DP MP STEPS
    python tests/parallel/tp_worker.py train OUT DATA KIND 1 1 STEPS
        the Trainer fine-tuning a tiny Llama (KIND full with SGD, or lora: LoRA on q/v/o/down with AdamW) with
        set_parallel_config(data_parallel=DP, model_parallel=MP) on the global batch 4, then evaluating, then
        resuming from its checkpoint for one more step -> OUT/<KIND>_dp<DP>_mp<MP>_rank<r>.json (logged
        losses) and the run's checkpoints in OUT/<KIND>_dp<DP>_mp<MP>/
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import mindspore as ms  # noqa: E402
from mindspore import Tensor  # noqa: E402

from mindformers import AutoModel, AutoTokenizer, Trainer, TrainingArguments, init_context  # noqa: E402
from tests.trainer.conftest import tiny_llama  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
# (fixture, vocab_emb_dp): untied heads also split their vocabulary
FAMILIES = (("families/qwen3", True), ("families/mistral", False), ("families/mixtral", False),
            ("families/qwen3_moe", False), ("interop/gpt2/base", True), ("interop/llama/base", True))
# LoRA on split linears: every projection of a Llama (column- and row-parallel); GPT-2's fused q|k|v c_attn
LORA = (("interop/llama/base", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
        ("interop/gpt2/base", ["c_attn", "c_proj"]))


def families(out):
    from mindspore.communication import get_group_size

    from mindformers.parallel.tensor_parallel import _slice, apply_tensor_parallel, gather_state, split_layout
    from mindformers.parallel.tensor_parallel import tensor_parallel_groups

    world = get_group_size()
    tp_rank, _, group, _ = tensor_parallel_groups(world, world)
    ids = Tensor(np.random.default_rng(0).integers(3, 100, (2, 12)).astype(np.int32))
    results = {}
    cases = [(fixture, vocab_emb_dp, None) for fixture, vocab_emb_dp in FAMILIES]
    cases += [(fixture, True, targets) for fixture, targets in LORA]
    for fixture, vocab_emb_dp, targets in cases:
        whole = _load(fixture, targets)
        split = _load(fixture, targets)
        done = apply_tensor_parallel(split, vocab_emb_dp, group, tp_rank, world)
        layout = split_layout(split)
        (loss, grads), (tp_loss, tp_grads) = _loss_and_grads(whole, ids), _loss_and_grads(split, ids)
        worst = 0.0
        for name, grad in tp_grads.items():
            ref = grads[name]
            if name in layout:
                ref = _slice(ref, layout[name][1], tp_rank, world, layout[name][2])
            worst = max(worst, float(np.abs(grad - ref).max()))
        gathered = gather_state(split, group, tp_rank, world)
        results[fixture + (" lora" if targets else "")] = {
            "loss": loss, "tp_loss": tp_loss, "grad_diff": worst, "split_modules": len(done),
            "split_parameters": len(layout), "gradients": len(tp_grads),
            "lora_gradients": sum("lora_" in n for n in tp_grads),
            "gathered_diff": max(float(np.abs(gathered[n] - p.asnumpy()).max()) for n, p in whole.parameters_and_names())}
    with open(os.path.join(out, f"families_rank{tp_rank}.json"), "w") as f:
        json.dump(results, f)


def _load(fixture, lora_targets):
    from mindformers.tuners import LoraConfig, get_peft_model

    model = AutoModel.from_pretrained(os.path.join(FIXTURES, fixture))
    if lora_targets:  # B random too (init_lora_weights=False), so that A's gradients are not zero
        config = LoraConfig(r=4, lora_alpha=8, target_modules=lora_targets, init_lora_weights=False)
        model = get_peft_model(model, config, seed=0).base_model  # the same adapters in both copies
    return model


def _loss_and_grads(model, ids):
    model.set_train(False)  # no dropout (GPT-2)

    def loss_of(x):
        return model(x, labels=x)[0]

    loss, grads = ms.value_and_grad(loss_of, None, model.trainable_params())(ids)
    return float(loss.asnumpy()), {p.name: g.asnumpy() for p, g in zip(model.trainable_params(), grads)}


def train(out, data, kind, dp, mp, steps):
    dp, mp, steps = int(dp), int(mp), int(steps)
    rank, size = init_context(use_parallel=dp * mp > 1, context_config={"mode": 0, "device_target": "CPU"})
    tag = f"{kind}_dp{dp}_mp{mp}"
    trainer, model = _trainer(out, data, kind, dp, mp, steps)
    state = trainer.train()
    metrics = trainer.evaluate()
    # a new process's view: fresh weights, resumed from the checkpoint the run saved, one more step
    resumed, _ = _trainer(out, data, kind, dp, mp, steps + 1, evaluate=False)
    more = resumed.train(resume_training=True)
    base = getattr(model, "base_model", model)
    resumed_losses = [h["loss"] for h in more.log_history if "loss" in h]  # the last: the step after resuming
    with open(os.path.join(out, f"{tag}_rank{rank}.json"), "w") as f:
        json.dump({"rank": rank, "size": size, "losses": [h["loss"] for h in state.log_history if "loss" in h],
                   "eval_loss": metrics["eval_loss"], "resumed_loss": resumed_losses[-1],
                   "q_proj": list(base.model.layers[0].self_attn.q_proj.weight.shape)}, f)


def _trainer(out, data, kind, dp, mp, steps, evaluate=True):
    # batch_size is per data-parallel replica: the global batch is 4 in every layout
    args = TrainingArguments(output_dir=os.path.join(out, f"{kind}_dp{dp}_mp{mp}"), max_steps=steps,
                             batch_size=4 // dp, seq_length=64, optim="adamw" if kind == "lora" else "sgd",
                             learning_rate=1e-2 if kind == "lora" else 0.5, logging_steps=1,
                             save_steps=3, disable_tqdm=True, report_to=[])
    model = tiny_llama()
    if kind == "lora":
        from mindformers.tuners import LoraConfig, get_peft_model

        config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
                            init_lora_weights=False)
        model = get_peft_model(model, config, seed=0)
    trainer = Trainer(model=model, tokenizer=AutoTokenizer.from_pretrained("smollm2_135m_instruct"), args=args,
                      train_dataset=data, eval_dataset=data if evaluate else None)
    trainer.set_parallel_config(data_parallel=dp, model_parallel=mp)
    return trainer, model


if __name__ == "__main__":
    if sys.argv[1] == "families":
        init_context(use_parallel=True, context_config={"mode": 1, "device_target": "CPU"})
        families(sys.argv[2])
    else:
        train(*sys.argv[2:])
