"""AdaLoRA (mindformers/tuners/adalora/): PEFT 0.21's allocated adapter (tests/fixtures/peft_adalora, made by its
make_reference.py) gives PEFT's logits unmerged and merged and saves as PEFT saved it; an adapter we allocate and
save loads in PEFT with our logits; the rank allocator reproduces PEFT's masks and rank_pattern exactly from
PEFT's recorded weights and gradients; the orthogonal regulariser equals PEFT's; the formula against numpy and
identity at init; a fine-tune through the Trainer lowers held-out loss and ends on the budget; bad input named."""
import json
import os

import numpy as np
import pytest
from mindspore import Tensor
from safetensors.numpy import load_file

from mindformers import AutoModel
from mindformers.tuners import AdaLoraConfig, LoraConfig, PeftModel, RankAllocator, SVDLinear, get_peft_model
from tests.conftest import FIXTURES, INTEROP, ids_tensor
from tests.trainer import conftest as trainer_fixtures

chats, small_chats, tok = trainer_fixtures.chats, trainer_fixtures.small_chats, trainer_fixtures.tok  # fixtures

ATOL = 1e-4
HERE = os.path.join(FIXTURES, "peft_adalora")
IDS = ids_tensor(np.load(os.path.join(INTEROP, "llama", "input_ids.npy")))
SLOTS = ("lora_A", "lora_E", "lora_B")


def base():
    return AutoModel.from_pretrained(os.path.join(INTEROP, "llama", "base"))


def reference_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_reference", os.path.join(HERE, "make_reference.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_same_files(ours_dir, theirs_dir):
    ours = load_file(os.path.join(ours_dir, "adapter_model.safetensors"))
    theirs = load_file(os.path.join(theirs_dir, "adapter_model.safetensors"))
    assert ours.keys() == theirs.keys()
    for key in theirs:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    read = [json.load(open(os.path.join(d, "adapter_config.json"), encoding="utf-8")) for d in (ours_dir, theirs_dir)]
    assert read[0]["rank_pattern"] == read[1]["rank_pattern"] and read[0]["peft_type"] == "ADALORA"


def test_peft_adapter_gives_peft_logits_merged_and_saved_alike(tmp_path):
    directory = os.path.join(HERE, "adapter")
    reference = np.load(os.path.join(directory, "peft_logits.npz"))
    model = PeftModel.from_pretrained(base(), directory)
    pattern = model.peft_config["default"].rank_pattern
    layer = model.base_model.model.layers[1].self_attn.v_proj
    assert isinstance(layer, SVDLinear) and layer.r["default"] == sum(pattern["model.layers.1.self_attn.v_proj.lora_E"])
    assert layer.ranknum["default"] == 6 and sum(map(sum, pattern.values())) == 3 * 6  # target_r x layers
    np.testing.assert_allclose(model(IDS).asnumpy(), reference["logits"], atol=ATOL, rtol=0)
    model.save_pretrained(str(tmp_path))
    assert_same_files(str(tmp_path), directory)
    np.testing.assert_allclose(model.merge_and_unload()(IDS).asnumpy(), reference["merged"], atol=ATOL, rtol=0)


def test_adapter_we_allocate_and_save_loads_in_peft(tmp_path):
    directory = os.path.join(HERE, "ours")
    reference = np.load(os.path.join(directory, "peft_logits.npz"))
    model = reference_script().build_ours()  # full-rank layers with pruned triplets zeroed
    layer = model.base_model.model.layers[0].mlp.down_proj
    assert layer.r["default"] == 4 and 0 < int(layer.rank_mask["default"].sum()) < 4
    np.testing.assert_allclose(model(IDS).asnumpy(), reference["logits"], atol=ATOL, rtol=0)
    model.save_pretrained(str(tmp_path))  # shrunk to the kept triplets, as PEFT saves
    assert_same_files(str(tmp_path), directory)
    loaded = PeftModel.from_pretrained(base(), directory)
    np.testing.assert_allclose(loaded(IDS).asnumpy(), reference["logits"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(model.merge_and_unload()(IDS).asnumpy(), reference["merged"], atol=ATOL, rtol=0)


def _trace():
    trace = np.load(os.path.join(HERE, "trace.npz"))
    modules = sorted({k.split("/")[2] for k in trace.files if k.startswith("w/0/")})
    return trace, modules


def test_rank_allocator_reproduces_peft_masks_exactly():
    script = reference_script()
    trace, modules = _trace()
    config = AdaLoraConfig(**{k: v for k, v in script.PEFT_CASE.items() if k != "task_type"})
    allocator = RankAllocator(config, {m: config.init_r for m in modules})
    assert (allocator.init_bgt, allocator.target_bgt) == (36, 18)
    pattern, allocations = None, 0
    for step in range(config.total_step):
        weights = {m: {s: trace[f"w/{step}/{m}/{s}"] for s in SLOTS} for m in modules}
        grads = {m: {s: trace[f"g/{step}/{m}/{s}"] for s in SLOTS} for m in modules}
        masks = allocator.step(weights, grads, step, pattern)
        if masks is not None:
            pattern, allocations = masks, allocations + 1
        for m in modules:
            e = weights[m]["lora_E"] if masks is None else np.where(masks[m][:, None], weights[m]["lora_E"], 0.0)
            np.testing.assert_array_equal(e, trace[f"e_after/{step}/{m}"], err_msg=f"step {step} {m}")
            if f"keep/{step}/{m}" in trace.files:
                np.testing.assert_array_equal(pattern[m], trace[f"keep/{step}/{m}"], err_msg=f"step {step} {m}")
            else:
                assert pattern is None
    assert allocations == 6  # steps 2-5 (budget 27, 21, 19, 18), 6 (final), 7 (re-applied)
    assert sum(int(k.sum()) for k in pattern.values()) == 18
    assert [allocator.budget_schedule(s)[0] for s in range(8)] == [36, 36, 27, 21, 19, 18, 18, 18]


def test_orth_regulariser_equals_peft():
    trace, modules = _trace()
    model = get_peft_model(base(), AdaLoraConfig(init_r=6, target_r=3, total_step=8, target_modules=["q_proj", "v_proj"],
                                                 orth_reg_weight=float(trace["orth_reg_weight"])))
    params = dict(model.base_model.parameters_and_names())
    for m in modules:
        for s in SLOTS:
            params[f"{m}.{s}.default"].set_data(Tensor(trace[f"w/7/{m}/{s}"] * (trace[f"e_after/7/{m}"] != 0 if s == "lora_E" else 1)))
    value = float(model.training_regulariser()().asnumpy())
    np.testing.assert_allclose(value, float(trace["reg_loss"]), atol=2e-6, rtol=0)
    a, b = (trace[f"w/7/{modules[0]}/{s}"].astype(np.float64) for s in ("lora_A", "lora_B"))
    eye = np.eye(6)
    by_hand = sum(np.linalg.norm(trace[f"w/7/{m}/lora_A"] @ trace[f"w/7/{m}/lora_A"].T - eye) +
                  np.linalg.norm(trace[f"w/7/{m}/lora_B"].T @ trace[f"w/7/{m}/lora_B"] - eye) for m in modules)
    np.testing.assert_allclose(value, 0.5 * by_hand / (2 * len(modules)), rtol=1e-5)
    assert np.linalg.norm(a @ a.T - eye) > 0 and np.linalg.norm(b.T @ b - eye) > 0


def test_formula_and_identity_at_init():
    model = get_peft_model(base(), AdaLoraConfig(init_r=4, target_r=2, total_step=10, lora_alpha=12,
                                                 target_modules=["down_proj"], init_lora_weights=False), seed=0)
    layer = model.base_model.model.layers[2].mlp.down_proj  # [64, 128]
    a, e, b = (getattr(layer, s)["default"].asnumpy().astype(np.float64) for s in SLOTS)
    delta = b @ (a * e) * 12 / (4 + 1e-5)
    x = np.random.default_rng(0).normal(size=(3, 128)).astype(np.float32)
    np.testing.assert_allclose(layer(Tensor(x)).asnumpy(), x @ (layer.weight.asnumpy() + delta).T, atol=1e-4, rtol=1e-4)
    identity = get_peft_model(base(), AdaLoraConfig(total_step=10, target_modules=["q_proj", "v_proj"]), seed=0)
    v = identity.base_model.model.layers[0].self_attn.v_proj
    assert v.lora_E["default"].asnumpy().tolist() == [[0.0]] * 12 and abs(v.lora_A["default"].asnumpy().std() - 0.02) < 0.003
    np.testing.assert_array_equal(identity(IDS).asnumpy(), base()(IDS).asnumpy())


def test_bad_input_named(tmp_path):
    with pytest.raises(ValueError, match="AdaLoRA needs total_step"):
        AdaLoraConfig(init_r=8, target_r=4)
    with pytest.raises(ValueError, match=r"init_r \(2\) must be at least target_r \(4\)"):
        AdaLoraConfig(init_r=2, target_r=4, total_step=10)
    with pytest.raises(ValueError, match="leave no budgeting phase"):
        AdaLoraConfig(total_step=10, tinit=5, tfinal=5)
    with pytest.raises(ValueError, match="use_dora"):
        AdaLoraConfig(total_step=10, use_dora=True)
    with pytest.raises(ValueError, match="unknown pet_config key"):
        AdaLoraConfig.from_pet_config({"pet_type": "adalora", "total_step": 10, "init_rank": 4})
    with pytest.raises(ValueError, match="a ADALORA config cannot be read as LoraConfig"):
        LoraConfig.from_pretrained(os.path.join(HERE, "adapter"))
    with pytest.raises(ValueError, match="init_r=4 triplets were expected"):
        get_peft_model(base(), AdaLoraConfig(init_r=4, target_r=2, total_step=10, target_modules=["q_proj"],
                                             rank_pattern={"model.layers.0.self_attn.q_proj.lora_E": [True] * 6}))


def test_fine_tune_through_the_trainer_allocates_the_budget_and_resumes_exactly(tmp_path, small_chats, tok):
    from mindformers import Trainer, TrainingArguments
    from tests.trainer.conftest import tiny_llama

    def run(resume=None):
        config = AdaLoraConfig(init_r=8, target_r=2, tinit=0, tfinal=1, total_step=8, lora_alpha=8)
        model = get_peft_model(tiny_llama(), config, seed=0)
        args = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=8, batch_size=4, seq_length=64,
                                 learning_rate=0.2, logging_steps=1, save_steps=4, disable_tqdm=True, report_to=[])
        trainer = Trainer(model=model, tokenizer=tok, args=args, train_dataset=small_chats[0],
                          eval_dataset=small_chats[1])
        before = trainer.evaluate()["eval_loss"] if resume is None else None
        state = trainer.train(resume_training=resume)
        return model, trainer, before, {h["step"]: h["loss"] for h in state.log_history if "loss" in h}

    model, trainer, before, losses = run()
    assert trainer.evaluate()["eval_loss"] < before - 0.02
    pattern = model.peft_config["default"].rank_pattern
    assert len(pattern) == 4 and sum(map(sum, pattern.values())) == 2 * 4  # target_r x adapted layers
    for key, keep in pattern.items():  # the pruned triplets' singular values are zero, the kept ones not
        layer = dict(model.base_model.cells_and_names())[key[: -len(".lora_E")]]
        e = layer.lora_E["default"].asnumpy()[:, 0]
        assert (e[~np.array(keep)] == 0).all() and (e[np.array(keep)] != 0).all()
    model.save_pretrained(str(tmp_path / "adapter"))
    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert sum(v.shape[0] for k, v in saved.items() if k.endswith("lora_E")) == 8
    # checkpoint-4 sits in the budgeting phase: the resumed run needs the allocator's averages to allocate alike
    assert os.path.isfile(str(tmp_path / "run" / "checkpoint-4" / "method_state.safetensors"))
    resumed_model, _, _, resumed = run(resume=str(tmp_path / "run" / "checkpoint-4"))
    np.testing.assert_allclose([resumed[s] for s in range(5, 9)], [losses[s] for s in range(5, 9)], rtol=1e-5)
    assert resumed_model.peft_config["default"].rank_pattern == pattern


def test_trainer_step_adds_the_regulariser_and_keeps_its_gradients(tmp_path):
    """The compiled step's loss includes orth_reg_weight x the penalty, and the gradients handed to after_step
    are those of that loss (no clipping here), computed eagerly for comparison."""
    import mindspore as ms

    from mindformers import TrainingArguments
    from mindformers.trainer.optim import build_optimizer
    from mindformers.trainer.trainer import _StepFunctions
    from tests.trainer.conftest import tiny_llama

    model = get_peft_model(tiny_llama(), AdaLoraConfig(init_r=4, target_r=2, total_step=8, init_lora_weights=False,
                                                       orth_reg_weight=0.3), seed=0)
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, max_grad_norm=0.0, report_to=[])
    optimizer = build_optimizer(model, args)
    ids = Tensor(np.random.default_rng(0).integers(3, 1000, (2, 12)).astype(np.int32))
    mask = Tensor(np.ones((2, 12), np.int32))
    params = list(optimizer.parameters)
    regulariser = model.training_regulariser()

    def loss_of():
        return model(ids, mask, None, ids)[0] + regulariser()

    expected_loss, expected = ms.value_and_grad(loss_of, None, params)()
    plain = float(model(ids, mask, None, ids)[0].asnumpy())
    np.testing.assert_allclose(float(expected_loss.asnumpy()) - plain, float(regulariser().asnumpy()), rtol=1e-4)
    steps = _StepFunctions(model, optimizer, args, 1)
    loss = steps.step(ids, mask, ids, Tensor([22.0], ms.float32), Tensor(1.0, ms.float32))[0]
    np.testing.assert_allclose(float(loss.asnumpy()[0]), float(expected_loss.asnumpy()), rtol=1e-5)
    paths, keeper = model._step_gradients  # pylint: disable=protected-access
    assert len(paths) == 2 * 2 * 3  # A, E and B of q_proj and v_proj in 2 layers
    by_name = {p.name: g.asnumpy() for p, g in zip(params, expected)}
    for path, kept in zip(paths, keeper.kept):
        np.testing.assert_allclose(kept.asnumpy(), by_name[path], atol=1e-6, rtol=1e-4, err_msg=path)
    model.after_optimizer_step(0)  # the allocator's first sensitivities: (1 - beta1) |w * grad|
    allocator = model.method_state["default"]
    layer = model.base_model.model.layers[0].self_attn.q_proj
    w, g = layer.lora_A["default"].asnumpy(), by_name["model.layers.0.self_attn.q_proj.lora_A.default"]
    np.testing.assert_allclose(allocator.exp_avg_ipt[("model.layers.0.self_attn.q_proj", "lora_A")],
                               np.float32(0.15) * np.abs(w * g), rtol=1e-4, atol=1e-7)
