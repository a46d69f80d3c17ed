"""SWIFT-style API: prepare_model with named tuners, the SWIFT folder layout, loading with renames,
activation with offload, merge/unmerge, conversion to PEFT files, per-thread adapters."""
import json
import os
import threading

import numpy as np
import pytest
from safetensors.numpy import load_file

from mindformers import AutoModel
from mindformers.tuners import LoRAConfig, PeftModel, Swift, SwiftModel
from tests.conftest import INTEROP, ids_tensor

IDS = ids_tensor(np.load(os.path.join(INTEROP, "llama", "input_ids.npy")))


def base():
    return AutoModel.from_pretrained(os.path.join(INTEROP, "llama", "base"))


def randomise(model, seed=0):
    """Give every LoRA B non-zero values so adapters change outputs."""
    rng = np.random.default_rng(seed)
    for name, param in model.parameters_and_names():
        if ".lora_B." in name:
            param.set_data(type(param)(rng.normal(0, 0.2, param.shape).astype(np.float32)))


@pytest.fixture()
def two_tuners():
    model = Swift.prepare_model(base(), {
        "first_tuner": LoRAConfig(r=16, target_modules=["q_proj", "v_proj"], lora_alpha=32, lora_dropout=0.0),
        "second_tuner": LoRAConfig(r=8, target_modules="all-linear"),
    }, seed=0)
    randomise(model)
    return model


def logits_with(model, names):
    model.set_active_adapters(names)
    return model(IDS).asnumpy()


def test_prepare_save_load_layout_and_outputs(two_tuners, tmp_path):
    model = two_tuners
    assert isinstance(model, SwiftModel) and model.active_adapters == ["first_tuner", "second_tuner"]
    both = model(IDS).asnumpy()
    first = logits_with(model, ["first_tuner"])
    assert np.abs(both - first).max() > 1e-2
    model.save_pretrained(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["configuration.json", "first_tuner", "second_tuner"]
    config = json.loads((tmp_path / "first_tuner" / "adapter_config.json").read_text())
    assert config["swift_type"] == "LORA" and config["r"] == 16 and config["lora_alpha"] == 32
    keys = load_file(str(tmp_path / "first_tuner" / "adapter_model.safetensors"))
    assert "model.layers.0.self_attn.q_proj.lora_A.first_tuner.weight" in keys and len(keys) == 12
    assert len(load_file(str(tmp_path / "second_tuner" / "adapter_model.safetensors"))) == 42

    loaded = Swift.from_pretrained(base(), str(tmp_path), adapter_name=["first_tuner"])
    np.testing.assert_allclose(loaded(IDS).asnumpy(), first, atol=1e-5, rtol=0)
    renamed = Swift.from_pretrained(base(), str(tmp_path), adapter_name={"first_tuner": "mine"})
    assert renamed.active_adapters == ["mine"]
    np.testing.assert_allclose(renamed(IDS).asnumpy(), first, atol=1e-5, rtol=0)
    everything = Swift.from_pretrained(base(), str(tmp_path))
    np.testing.assert_allclose(everything(IDS).asnumpy(), both, atol=1e-5, rtol=0)


def test_prepare_model_is_callable_again_and_counts_parameters(two_tuners):
    model = Swift.prepare_model(two_tuners, {"third": LoRAConfig(r=2, target_modules=["o_proj"])})
    assert sorted(model.adapters) == ["first_tuner", "second_tuner", "third"]
    summary = model.get_trainable_parameters()
    trainable = 3 * (16 * 64 * 2 + 16 * 32 + 16 * 64)  # first: q [16x64 + 64x16], v [16x64 + 32x16]
    trainable += 3 * (8 * (64 + 64) + 8 * (64 + 32) * 2 + 8 * (64 + 64) + 8 * (64 + 128) * 2 + 8 * (128 + 64))
    trainable += 3 * 2 * (64 + 64)
    assert summary.startswith(f"trainable params: {trainable / 1e6:.4f}M || all params: ")
    assert "trainable%: " in summary and "memory: " in summary


def test_offload_cpu_and_meta_then_reactivate(two_tuners, tmp_path):
    model = two_tuners
    second = logits_with(model, ["second_tuner"])
    first = logits_with(model, ["first_tuner"])
    model.set_active_adapters(["first_tuner"], offload="cpu")
    assert not any(".second_tuner." in n for n, _ in model.parameters_and_names())  # weights left the layers
    np.testing.assert_allclose(model(IDS).asnumpy(), first, atol=1e-6, rtol=0)
    model.activate_adapter("second_tuner")  # restored from the host copy
    model.deactivate_adapter("first_tuner")
    np.testing.assert_allclose(model(IDS).asnumpy(), second, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="offload='meta' would lose it"):
        model.deactivate_adapter("second_tuner", offload="meta")
    model.save_pretrained(str(tmp_path), adapter_name="second_tuner")
    loaded = Swift.from_pretrained(base(), str(tmp_path))
    loaded.deactivate_adapter("second_tuner", offload="meta")
    loaded.activate_adapter("second_tuner")  # reloaded from its directory
    np.testing.assert_allclose(loaded(IDS).asnumpy(), second, atol=1e-5, rtol=0)


def test_merge_unmerge_merge_and_unload(two_tuners):
    model = two_tuners
    before = model(IDS).asnumpy()
    Swift.merge(model)
    np.testing.assert_allclose(model(IDS).asnumpy(), before, atol=1e-4, rtol=0)
    Swift.unmerge(model)
    np.testing.assert_allclose(model(IDS).asnumpy(), before, atol=1e-5, rtol=0)
    plain = Swift.merge_and_unload(model)
    assert type(plain.model.layers[1].mlp.down_proj).__name__ == "Linear"
    np.testing.assert_allclose(plain(IDS).asnumpy(), before, atol=1e-4, rtol=0)


def test_save_to_peft_format_loads_as_peft(two_tuners, tmp_path):
    model = two_tuners
    first = logits_with(model, ["first_tuner"])
    model.save_pretrained(str(tmp_path / "swift"))
    Swift.save_to_peft_format(str(tmp_path / "swift"), str(tmp_path / "peft"))
    peft_dir = tmp_path / "peft" / "first_tuner"
    config = json.loads((peft_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and "swift_type" not in config
    assert "base_model.model.model.layers.2.self_attn.v_proj.lora_B.weight" in load_file(str(peft_dir / "adapter_model.safetensors"))
    peft = PeftModel.from_pretrained(base(), str(peft_dir))
    np.testing.assert_allclose(peft(IDS).asnumpy(), first, atol=1e-5, rtol=0)


def test_per_thread_adapters(monkeypatch):
    """USE_UNIQUE_THREAD=0: each thread activates its own adapters on one shared model."""
    monkeypatch.setenv("USE_UNIQUE_THREAD", "0")
    configs = {f"a{i}": LoRAConfig(r=4, target_modules=["q_proj", "v_proj"]) for i in range(3)}
    model = Swift.prepare_model(base(), configs, seed=1)
    randomise(model, seed=2)
    expected = {}
    for name in [*configs, None]:
        model.set_active_adapters([name] if name else [])
        expected[name] = model(IDS).asnumpy()
    errors, done = [], []

    def worker(name):
        try:
            model.set_active_adapters([name] if name else [])
            for _ in range(6):
                out = model(IDS).asnumpy()
                if np.abs(out - expected[name]).max() > 1e-5:
                    errors.append(name)
            done.append(name)
        except Exception as err:  # reported by the main thread
            errors.append(repr(err))

    threads = [threading.Thread(target=worker, args=(name,)) for name in [*configs, None] * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(done) == 8


def test_global_activation_is_the_default(two_tuners):
    model = two_tuners
    model.set_active_adapters(["first_tuner"])
    seen = []
    thread = threading.Thread(target=lambda: seen.append(model.active_adapters))
    thread.start()
    thread.join()
    assert seen == [["first_tuner"]]
