"""SWIFT's Res-Tuning-Bypass (mindformers/tuners/restuning/): ms-swift's bypass chain (ResTuningBypassModule,
ResTunerBypassBlock, ResTuner, ResAdapter) against numpy on the decoder's own hidden states, for SWIFT's LLM
config (root layers.0 input, every layer's output, the final norm's input) and a per-block list with a
target output; SWIFT's initialisation (Xavier, zero_init_last on the last block) and the identity it gives;
SWIFT's save layout and reload beside a LoRA through Swift.prepare_model; refusals named; a fine-tune through
the Trainer's compiled step."""
import json
import os
from math import erf, sqrt

import numpy as np
import pytest
from mindspore import Tensor
from safetensors.numpy import load_file

from mindformers import AutoModel
from mindformers.models.common.layers import default_position_ids
from mindformers.tuners import LoRAConfig, ResTuningConfig, SideConfig, Swift, get_peft_model
from mindformers.utils import write_parameter
from tests.conftest import FIXTURES, INTEROP, ids_tensor
from tests.trainer import conftest as trainer_fixtures

chats, small_chats, tok = trainer_fixtures.chats, trainer_fixtures.small_chats, trainer_fixtures.tok  # fixtures
IDS = ids_tensor(np.load(os.path.join(INTEROP, "llama", "input_ids.npy")))
# SWIFT's Res-Tuning settings for LLMs (ms-swift's old MODEL_MAPPING 'restuner_TM' for Llama)
SWIFT_LLM = dict(root_modules=r".*layers.0$", stem_modules=r".*layers\.\d+$", target_modules=r".*model.norm",
                 target_modules_hook="input", tuner_cfg="res_adapter")


def base():
    return AutoModel.from_pretrained(os.path.join(INTEROP, "llama", "base"))


def hidden_states(model):
    """[input of layer 0, output of layer 0, output of layer 1, ...] of the plain stack, as numpy."""
    stack = model.model
    batch, seq = IDS.shape
    positions = default_position_ids(None, batch, seq)
    x = stack.embed(IDS, positions)
    cos, sin = stack.rope(positions)
    mask, window = stack.masks(None, None, batch, seq, seq)
    out = [x.asnumpy()]
    for layer in stack.layers:
        x, _ = layer(x, cos, sin, mask, window)
        out.append(x.asnumpy())
    return out


def res_adapter_np(tuner, x):
    """ms-swift's ResAdapter.forward (3-d input, adapter_weight None / scale / scale_channel)."""
    a = tuner.tuner
    h = x @ a.ln1.weight.asnumpy().T + a.ln1.bias.asnumpy()
    h = 0.5 * h * (1 + np.vectorize(erf)(h / sqrt(2)))
    delta = h @ a.ln2.weight.asnumpy().T + a.ln2.bias.asnumpy()
    return x + (delta * a.scaling.asnumpy() if a.weight_kind else delta)


def tuner_np(tuner, x):
    return {"res_adapter": res_adapter_np, "zero": lambda t, v: 0 * v, None: lambda t, v: v}[tuner.kind](tuner, x)


def bypass_np(bypass, root, stems):
    """ms-swift's ResTuningBypassModule.forward: x = root; x = lateral_i(stem_i) + vertical_i(x)."""
    x = root
    for block, stem in zip(bypass.bypass_blocks, stems):
        x = tuner_np(block.lateral_tuner, stem) + tuner_np(block.vertical_tuner, x)
    return x


def test_swift_llm_config_against_numpy_and_zero_init_last():
    model = Swift.prepare_model(base(), ResTuningConfig(**SWIFT_LLM, zero_init_last=True), seed=0)
    bypass = model.base_model.restuning_default
    assert type(model.base_model.model).__name__ == "ResTuningDecoderModel" and len(bypass.bypass_blocks) == 3
    names = sorted(n for n, p in model.base_model.parameters_and_names() if p.requires_grad)
    assert len(names) == 3 * 2 * 4 and names[:2] == ["restuning_default.bypass_blocks.0.lateral_tuner.tuner.ln1.bias",
                                                     "restuning_default.bypass_blocks.0.lateral_tuner.tuner.ln1.weight"]
    for i, block in enumerate(bypass.bypass_blocks):
        for tuner in (block.lateral_tuner.tuner, block.vertical_tuner.tuner):
            assert tuner.ln1.weight.shape == (32, 64)  # SWIFT's default adapter_length
            assert np.abs(tuner.ln1.weight.asnumpy()).max() <= sqrt(6 / 96) and np.abs(tuner.ln1.bias.asnumpy()).max() < 1e-5
            zeroed = not tuner.ln2.weight.asnumpy().any() and not tuner.ln2.bias.asnumpy().any()
            assert zeroed == (i == 2)  # zero_init_last: the last block only
    hs = hidden_states(base())
    expected = bypass_np(bypass, hs[0], hs[1:])  # replaces the final norm's input
    expected = model.base_model.model.norm(Tensor(expected.astype(np.float32))).asnumpy()
    np.testing.assert_allclose(model.base_model.model(IDS).asnumpy(), expected, atol=1e-4, rtol=0)
    assert np.abs(model(IDS).asnumpy() - base()(IDS).asnumpy()).max() > 0.1  # SWIFT's init is no identity here
    with model.disable_adapter():
        np.testing.assert_array_equal(model(IDS).asnumpy(), base()(IDS).asnumpy())


def test_per_block_list_on_a_target_output_against_numpy():
    tuner_cfg = [{"lateral_cfg": {"res_adapter": {"adapter_length": 8, "adapter_weight": "scale_channel"}},
                  "vertical_cfg": "zero"},
                 {"lateral_cfg": "res_adapter", "vertical_cfg": {"res_adapter": {"adapter_weight": "scale"}}}]
    config = ResTuningConfig(root_modules=r"model\.layers\.0", root_modules_hook="output",
                             stem_modules=["model.layers.1", "model.layers.0"],  # blocks in list order
                             target_modules=r"model\.layers\.2", target_modules_hook="output", tuner_cfg=tuner_cfg)
    model = Swift.prepare_model(base(), config, seed=3)
    bypass = model.base_model.restuning_default
    first, second = bypass.bypass_blocks
    assert first.lateral_tuner.tuner.ln1.weight.shape == (8, 64) and first.vertical_tuner.kind == "zero"
    write_parameter(first.lateral_tuner.tuner.scaling, np.linspace(0.5, 1.5, 64).astype(np.float32))
    write_parameter(second.vertical_tuner.tuner.scaling, np.array([0.7], np.float32))
    hs = hidden_states(base())
    expected = bypass_np(bypass, hs[1], [hs[2], hs[1]])  # replaces layer 2's output, then the final norm
    expected = model.base_model.model.norm(Tensor(expected.astype(np.float32))).asnumpy()
    np.testing.assert_allclose(model.base_model.model(IDS).asnumpy(), expected, atol=1e-4, rtol=0)


def test_without_a_root_the_first_stem_input_starts_the_bypass():
    # SWIFT's code sets out to do this (it probes the first stem's input) but indexes an empty root list
    config = ResTuningConfig(stem_modules=r"model\.layers\.[12]", target_modules=r"model\.norm", tuner_cfg="res_adapter")
    model = Swift.prepare_model(base(), config, seed=5)
    assert model.base_model.model._restuning_plans == (("default", 2, (3, 5), 6),)
    hs = hidden_states(base())
    expected = bypass_np(model.base_model.restuning_default, hs[1], [hs[2], hs[3]])
    expected = model.base_model.model.norm(Tensor(expected.astype(np.float32))).asnumpy()
    np.testing.assert_allclose(model.base_model.model(IDS).asnumpy(), expected, atol=1e-4, rtol=0)


def test_identity_at_init_where_zero_init_last_gives_it():
    # one block, lateral Res-Adapter zeroed by zero_init_last, vertical zero: the bypass is the last layer's output
    config = ResTuningConfig(root_modules=r"model\.layers\.0", stem_modules=r"model\.layers\.2",
                             target_modules=r"model\.norm", zero_init_last=True,
                             tuner_cfg={"lateral_cfg": "res_adapter", "vertical_cfg": "zero"})
    model = Swift.prepare_model(base(), config, seed=0)
    np.testing.assert_allclose(model(IDS).asnumpy(), base()(IDS).asnumpy(), atol=1e-5, rtol=0)



def test_norm_output_target_and_generation_with_the_kv_cache():
    config = ResTuningConfig(**{**SWIFT_LLM, "target_modules_hook": "output"})  # the norm's output is replaced
    model = Swift.prepare_model(base(), config, seed=2)
    hs = hidden_states(base())
    expected = bypass_np(model.base_model.restuning_default, hs[0], hs[1:])
    np.testing.assert_allclose(model.base_model.model(IDS).asnumpy(), expected, atol=1e-4, rtol=0)
    # cached decoding runs the bypass on each step's hidden states (position-wise tuners): same greedy ids
    prompt = IDS.shape[1]
    ids = np.asarray(model.generate(IDS[:1], max_new_tokens=4, do_sample=False, eos_token_id=[]))
    assert ids.shape == (1, prompt + 4)
    logits = model(ids_tensor(ids)).asnumpy()  # one uncached forward over the whole sequence
    np.testing.assert_array_equal(logits[0, prompt - 1:-1].argmax(-1), ids[0, prompt:])


def test_two_bypasses_switch_like_separate_models():
    output_hook = ResTuningConfig(**{**SWIFT_LLM, "target_modules_hook": "output"})
    model = Swift.prepare_model(base(), {"a": ResTuningConfig(**SWIFT_LLM), "b": output_hook}, seed=4)
    assert model.base_model.model._restuning_plans == (("a", 0, (1, 3, 5), 6), ("b", 0, (1, 3, 5), 7))
    alone = {name: Swift.prepare_model(base(), {name: config}, seed=4)(IDS).asnumpy()
             for name, config in (("a", ResTuningConfig(**SWIFT_LLM)), ("b", output_hook))}
    for name in ("a", "b"):
        model.set_active_adapters([name])
        np.testing.assert_allclose(model(IDS).asnumpy(), alone[name], atol=1e-5, rtol=0)
    model.delete_adapter("a")
    assert not hasattr(model.base_model, "restuning_a") and model.active_adapters == ["b"]
    np.testing.assert_allclose(model(IDS).asnumpy(), alone["b"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("case,tensors", [("restuning", 24), ("restuning_blocks", 14)])
def test_ms_swift_saved_bypass_gives_swift_logits_and_saves_alike(tmp_path, case, tensors):
    """ms-swift's own ResTuning (tests/fixtures/swift_methods, made by its script): SWIFT's LLM settings, and
    listed stems with per-block tuners (scale_channel, zero, scale) replacing a layer's output."""
    swift_dir = os.path.join(FIXTURES, "swift_methods", case)
    model = Swift.from_pretrained(base(), swift_dir)
    reference = np.load(os.path.join(swift_dir, "swift_logits.npy"))
    np.testing.assert_allclose(model(IDS).asnumpy(), reference, atol=1e-4, rtol=0)
    assert np.abs(base()(IDS).asnumpy() - reference).max() > 0.1
    model.save_pretrained(str(tmp_path))
    ours = load_file(str(tmp_path / "default" / "adapter_model.safetensors"))
    theirs = load_file(os.path.join(swift_dir, "default", "adapter_model.safetensors"))
    assert ours.keys() == theirs.keys() and len(theirs) == tensors
    for key in theirs:
        np.testing.assert_array_equal(ours[key], theirs[key])
    configs = []
    for directory in (str(tmp_path / "default"), os.path.join(swift_dir, "default")):
        with open(os.path.join(directory, "adapter_config.json"), encoding="utf-8") as f:
            configs.append(json.load(f))
    assert {k: configs[0].get(k, "missing") for k in configs[1]} == configs[1]  # every field of ms-swift's file

def test_lora_plus_restuning_in_swift_layout_reload_and_refusals(tmp_path):
    configs = {"first_tuner": LoRAConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
               "second_tuner": ResTuningConfig(**{**SWIFT_LLM, "tuner_cfg": {
                   "lateral_cfg": {"res_adapter": {"adapter_length": 16}}, "vertical_cfg": {"res_adapter": {}}}})}
    model = Swift.prepare_model(base(), configs, seed=1)
    assert model.active_adapters == ["first_tuner", "second_tuner"]
    both = model(IDS).asnumpy()
    model.set_active_adapters(["first_tuner"])
    lora_only = model(IDS).asnumpy()
    model.set_active_adapters(["first_tuner", "second_tuner"])
    assert np.abs(both - lora_only).max() > 0.1
    model.save_pretrained(str(tmp_path))
    saved = load_file(str(tmp_path / "second_tuner" / "adapter_model.safetensors"))
    assert len(saved) == 24 and sorted(saved)[-1] == "restuning_second_tuner.bypass_blocks.2.vertical_tuner.tuner.ln2.weight"
    assert saved["restuning_second_tuner.bypass_blocks.1.lateral_tuner.tuner.ln1.weight"].shape == (16, 64)
    config = (tmp_path / "second_tuner" / "adapter_config.json").read_text()
    assert '"swift_type": "RESTUNING"' in config and '"stem_modules": ".*layers\\\\.\\\\d+$"' in config
    again = Swift.from_pretrained(base(), str(tmp_path))
    assert sorted(again.active_adapters) == ["first_tuner", "second_tuner"]
    np.testing.assert_allclose(again(IDS).asnumpy(), both, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="RESTUNING tuner, which cannot be merged .*no form in the weights"):
        again.merge_adapter(["second_tuner"])
    Swift.merge(again, "first_tuner")  # the LoRA merges beside the bypass
    np.testing.assert_allclose(again(IDS).asnumpy(), both, atol=1e-4, rtol=0)
    again.deactivate_adapter("second_tuner", offload="cpu")  # SWIFT's offload: the bypass leaves the model
    assert not hasattr(again.base_model, "restuning_second_tuner")
    np.testing.assert_allclose(again(IDS).asnumpy(), lora_only, atol=1e-4, rtol=0)
    again.activate_adapter("second_tuner")
    np.testing.assert_allclose(again(IDS).asnumpy(), both, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="'second_tuner' is a RESTUNING tuner, which PEFT does not have; it stays in SWIFT"):
        Swift.save_to_peft_format(str(tmp_path), str(tmp_path / "converted"))
    with pytest.raises(ValueError, match="RESTUNING tuner, which PEFT does not have"):
        get_peft_model(base(), ResTuningConfig(**SWIFT_LLM)).save_pretrained(str(tmp_path / "peft"))
    with pytest.raises(ValueError, match="a RESTUNING config cannot be read as SideConfig"):
        SideConfig.from_pretrained(str(tmp_path / "second_tuner"))
    unloaded = again.unload()
    assert type(unloaded.model).__name__ == "DecoderModel" and not hasattr(unloaded, "restuning_second_tuner")


def test_bad_input_is_named():
    def prepare(**fields):
        return Swift.prepare_model(base(), ResTuningConfig(**{**SWIFT_LLM, **fields}))

    with pytest.raises(ValueError, match=r"unknown pet_config key\(s\) \['stem_module'\] for RESTUNING; valid: .*stem_modules"):
        ResTuningConfig.from_pet_config({"pet_type": "restuning", "stem_module": "x", "tuner_cfg": "res_adapter"})
    with pytest.raises(ValueError, match="target_modules '.*final_norm' must match exactly one module .* none"):
        prepare(target_modules=r".*final_norm")
    with pytest.raises(ValueError, match=r"must match exactly one module .*\['model.layers.0', 'model.layers.1'"):
        prepare(target_modules=r"model\.layers\.\d")
    with pytest.raises(ValueError, match="root_modules '.*blocks.0' matched no module"):
        prepare(root_modules=r".*blocks.0")
    with pytest.raises(ValueError, match=r"probes the output of model.layers.1 after the target model.layers.1 \(input\) is replaced"):
        prepare(target_modules=r"model\.layers\.1")
    with pytest.raises(ValueError, match=r"cannot probe model.layers.0.mlp \(GatedMLP\) as its stem: .*\(model.layers.0, model.layers.1, ..., model.norm\)"):
        prepare(stem_modules=r"model\.layers\.\d\.mlp")
    with pytest.raises(ValueError, match="unknown tuner 'res_prompt'; known"):
        ResTuningConfig(**{**SWIFT_LLM, "tuner_cfg": "res_prompt"})
    with pytest.raises(ValueError, match="'res_group_adapter' is one of SWIFT's image tuners"):
        ResTuningConfig(**{**SWIFT_LLM, "tuner_cfg": "res_group_adapter"})
    with pytest.raises(ValueError, match="unknown res_adapter setting\\(s\\) \\['adapter_len'\\]"):
        ResTuningConfig(**{**SWIFT_LLM, "tuner_cfg": {"lateral_cfg": {"res_adapter": {"adapter_len": 8}}}})
    with pytest.raises(ValueError, match="unknown key\\(s\\) \\['res_adapter'\\] in a block's tuner_cfg"):
        ResTuningConfig(**{**SWIFT_LLM, "tuner_cfg": [{"res_adapter": {}}]})
    with pytest.raises(ValueError, match="adapter_weight 'gate' averages a gate over the sequence"):
        ResTuningConfig(**{**SWIFT_LLM, "tuner_cfg": {"vertical_cfg": {"res_adapter": {"adapter_weight": "gate"}}}})
    with pytest.raises(ValueError, match="tuner_cfg is required"):
        ResTuningConfig(**{**SWIFT_LLM, "tuner_cfg": None})
    with pytest.raises(ValueError, match="upsampling resizes image feature maps"):
        ResTuningConfig(**SWIFT_LLM, use_upsample=True)
    with pytest.raises(ValueError, match="tuner_cfg lists 2 blocks but the stems give 3"):
        prepare(tuner_cfg=["res_adapter", "zero"])
    with pytest.raises(ValueError, match="a SIDE config cannot be read as ResTuningConfig"):
        ResTuningConfig.from_dict({"swift_type": "SIDE", "target_modules": "model.norm"})


def test_trains_through_the_trainer_from_pet_config(tmp_path, small_chats, tok):
    from mindformers import Trainer, TrainingArguments

    model = trainer_fixtures.tiny_llama()
    model.config.pet_config = {"pet_type": "restuning", **SWIFT_LLM}
    model.apply_pet_config()
    assert type(model.model).__name__ == "ResTuningDecoderModel"
    assert model.restuning_default.bypass_blocks[1].lateral_tuner.tuner.ln1.weight.shape == (32, 32)  # hidden 32
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=6, batch_size=4, seq_length=64, learning_rate=1e-2,
                             logging_steps=3, save_steps=6, disable_tqdm=True, report_to=[])
    trainer = Trainer(model=model, tokenizer=tok, args=args, train_dataset=small_chats[0], eval_dataset=small_chats[1])
    frozen = model.model.layers[0].mlp.up_proj.weight.asnumpy().copy()
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < before - 0.02, (before, after)
    np.testing.assert_array_equal(model.model.layers[0].mlp.up_proj.weight.asnumpy(), frozen)
