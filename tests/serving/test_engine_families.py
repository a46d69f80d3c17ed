"""The multi-LoRA engine serves the new families: Qwen3 (q/k norm) and Mixtral (sparse experts), adapters
mixed with base rows in one continuously batched run, each request equal to generate() alone with its
adapter applied through the tuner API."""
import os

import numpy as np
import pytest

from mindformers import AutoModel
from mindformers.serving import Engine, GenerateStatus, RuntimeConfigBuilder, ServingError, StatusCode
from mindformers.tuners import LoraConfig, PeftModel, get_peft_model
from tests.conftest import FIXTURES

ADAPTERS = {"qv": (4, ["q_proj", "v_proj"]), "attn": (2, ["q_proj", "k_proj", "v_proj", "o_proj"])}
RUNNING = (GenerateStatus.Init, GenerateStatus.ContextFinished, GenerateStatus.Generating)


def family_dir(name):
    return os.path.join(FIXTURES, "families", name)


@pytest.fixture(scope="module", params=["qwen3", "mixtral"])
def served(request, tmp_path_factory):
    name = request.param
    root = tmp_path_factory.mktemp(f"{name}_adapters")
    dirs = {}
    for seed, (adapter, (rank, targets)) in enumerate(ADAPTERS.items(), start=1):
        model = get_peft_model(AutoModel.from_pretrained(family_dir(name)),
                               LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, init_lora_weights=False),
                               seed=seed)
        dirs[adapter] = str(root / adapter)
        model.save_pretrained(dirs[adapter])
    engine = Engine()
    engine.install_model(RuntimeConfigBuilder(name, model=family_dir(name)).max_batch(4).max_length(48)
                         .lora_max_num(2).lora_max_rank(8).warmup(False).build())
    engine.start_model(name)
    for adapter, path in dirs.items():
        engine.load_lora(name, adapter, path)
    yield name, engine, dirs
    engine.uninstall_model(name)


def alone(name, dirs, prompt, lora, max_new_tokens):
    model = AutoModel.from_pretrained(family_dir(name))
    model.generation_mode = "pynative"  # tiny model: eager steps beat compiling per shape
    if lora is not None:
        model = PeftModel.from_pretrained(model, dirs[lora])
    return model.generate([prompt], max_new_tokens=max_new_tokens, eos_token_id=[])[0, len(prompt):].tolist()


def test_mixed_adapters_in_one_batch_equal_each_request_alone(served):
    name, engine, dirs = served
    ids = np.load(os.path.join(family_dir(name), "reference.npz"))["input_ids"]
    requests = []
    for i, lora in enumerate([None, "qv", "attn", "qv", None, "attn"]):
        prompt = ids[i % 2, : 5 + 2 * i].tolist()
        status, handle, queue = engine.start_request_ids(name, prompt, {"max_new_tokens": 6 + i, "lora_name": lora,
                                                                      "eos_token_id": []})
        assert status.ok, status.message
        requests.append((prompt, lora, 6 + i, handle, queue))
    answers = {}
    for prompt, lora, new, handle, queue in requests:
        got = []
        while queue.GenerateStatus() in RUNNING:
            got += queue.Get(timeout=120) or []
        assert got == alone(name, dirs, prompt, lora, new), (name, lora)
        answers[lora] = got
        assert engine.release_request(name, handle).ok
    assert len({tuple(v) for v in answers.values()}) == 3  # the adapters change the answers


def test_expert_adapters_are_refused_with_a_reason(served, tmp_path):
    name, engine, _ = served
    if name != "mixtral":
        pytest.skip("experts only in Mixtral")
    model = get_peft_model(AutoModel.from_pretrained(family_dir(name)),
                           LoraConfig(r=2, target_modules=["q_proj"], target_parameters=["mlp.experts.down_proj"]))
    model.save_pretrained(str(tmp_path))
    with pytest.raises(ServingError, match=r"target_parameters \(MoE experts or routers\) is not served") as err:
        engine.load_lora(name, "experts", str(tmp_path))
    assert err.value.status.code is StatusCode.INVALID_REQUEST
