"""Training through LoRA on SmolLM2: only adapter weights move, the loss on a real text drops, and LoRA+
learning rates reach the optimizer."""
import numpy as np
import mindspore as ms
from mindspore import nn

from mindformers import AutoModel, AutoTokenizer
from mindformers.tuners import LoraConfig, create_optimizer_param_groups, get_peft_model

TEXT = ("Question: what is chemistry\nAnswer: the science of mixing chemicals.\n"
        "Question: what is crystallography\nAnswer: this is the science dealing with the study of crystals.")


def test_lora_training_moves_only_adapters_and_lowers_loss():
    model = get_peft_model(AutoModel.from_pretrained("smollm2_135m_instruct"),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]), seed=0)
    ids = AutoTokenizer.from_pretrained("smollm2_135m_instruct")(TEXT, return_tensors="ms")["input_ids"]
    groups = create_optimizer_param_groups(model, lr=1e-3, loraplus_lr_ratio=4)
    assert [(g["name"], g["lr"]) for g in groups] == [("groupA", 1e-3), ("groupB", 4e-3)]
    optimizer = nn.AdamWeightDecay([{k: v for k, v in g.items() if k != "name"} for g in groups], learning_rate=1e-3)

    def loss_fn(x):
        loss, _ = model(x, labels=x)
        return loss

    step = ms.value_and_grad(loss_fn, None, optimizer.parameters)
    frozen = {n: p.asnumpy().copy() for n, p in model.base_model.parameters_and_names() if not p.requires_grad}
    adapters = {n: p.asnumpy().copy() for n, p in model.base_model.parameters_and_names() if p.requires_grad}
    assert len(frozen) == 272 and len(adapters) == 120
    losses = []
    for _ in range(4):
        loss, grads = step(ids)
        optimizer(grads)
        losses.append(float(loss.asnumpy()))
    assert losses[-1] < 0.7 * losses[0], losses
    for name, param in model.base_model.parameters_and_names():
        if name in frozen:
            np.testing.assert_array_equal(param.asnumpy(), frozen[name])  # bit-identical
    moved = [n for n, p in model.base_model.parameters_and_names() if n in adapters and not np.array_equal(p.asnumpy(), adapters[n])]
    assert len(moved) == len(adapters)
