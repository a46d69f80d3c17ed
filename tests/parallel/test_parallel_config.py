"""ParallelConfig / RecomputeConfig checks, the readable plan (python -m mindformers.parallel.plan), and the
documented Trainer.set_parallel_config example in one process."""
import json
import logging

import numpy as np
import pytest

from mindformers import (
    AutoConfig,
    GPT2Config,
    LlamaConfig,
    MixtralConfig,
    ParallelConfig,
    RecomputeConfig,
    Trainer,
    TrainingArguments,
)
from mindformers.parallel.plan import main as plan_main
from mindformers.parallel.plan import make_plan

# Llama-shaped, scaled down with real ratios (Llama-2 7B: 32 heads of 128, ffn 11008/4096)
SMALL_LLAMA = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=344, num_layers=4, num_heads=8,
                          n_kv_heads=8, seq_length=64)


def test_bad_splits_name_the_field():
    cases = [
        (dict(model_parallel=3), r"model_parallel \(3\) must divide num_attention_heads \(8\)"),
        (dict(model_parallel=16), r"model_parallel \(16\) must divide num_attention_heads \(8\)"),
        (dict(pipeline_stage=8, micro_batch_num=8), r"pipeline_stage \(8\) is more than the 4 layers"),
        (dict(expert_parallel=2, data_parallel=2), r"expert_parallel \(2\) needs an MoE model"),
    ]
    for fields, message in cases:
        with pytest.raises(ValueError, match=message):
            ParallelConfig(**fields).check(SMALL_LLAMA)
    with pytest.raises(ValueError, match=r"must divide vocab_size \(251\) when vocab_emb_dp is false"):
        ParallelConfig(model_parallel=2, vocab_emb_dp=False).check(SMALL_LLAMA.replace(vocab_size=251))
    with pytest.raises(ValueError, match=r"2 x 4 x 2 = 16 devices, but 8 are there"):
        ParallelConfig(data_parallel=2, model_parallel=4, pipeline_stage=2, micro_batch_num=2).check(SMALL_LLAMA, 8)
    with pytest.raises(ValueError, match=r"model_parallel \(4\) must divide num_key_value_heads \(2\)"):
        ParallelConfig(model_parallel=4).check(SMALL_LLAMA.replace(n_kv_heads=2))
    moe = MixtralConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4, n_kv_heads=4,
                        num_local_experts=6)
    with pytest.raises(ValueError, match=r"expert_parallel \(4\) must divide the number of experts \(6\)"):
        ParallelConfig(data_parallel=4, expert_parallel=4).check(moe)
    with pytest.raises(ValueError, match=r"micro_batch_num \(1\) must be >= pipeline_stage \(2\)"):
        ParallelConfig(pipeline_stage=2)
    with pytest.raises(ValueError, match=r"expert_parallel \(4\) must divide data_parallel \(2\)"):
        ParallelConfig(data_parallel=2, expert_parallel=4)
    with pytest.raises(ValueError, match="parallel_config.model_parallel must be an integer >= 1, found 0"):
        ParallelConfig(model_parallel=0)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['tensor_parallel'\]"):
        ParallelConfig.from_dict({"tensor_parallel": 2})
    assert ParallelConfig.from_dict({"enable_parallel_optimizer": True}).optimizer_shard
    with pytest.raises(ValueError, match="recompute_config.recompute must be"):
        RecomputeConfig(recompute="yes")


def test_plan_of_a_llama_on_16_devices():
    parallel = ParallelConfig(data_parallel=2, model_parallel=4, pipeline_stage=2, micro_batch_num=4,
                              optimizer_shard=True, vocab_emb_dp=False)
    plan = make_plan(SMALL_LLAMA, parallel, device_num=16, batch_size=16)
    p = plan["parameters"]
    assert p["model.layers.0.self_attn.q_proj.weight"] == {"shape": [128, 128], "local_shape": [32, 128], "stage": 0,
                                                          "style": "colwise", "trainable": True}
    assert p["model.layers.3.self_attn.o_proj.weight"]["local_shape"] == [128, 32]
    assert p["model.layers.3.self_attn.o_proj.weight"]["stage"] == 1
    assert p["model.layers.1.mlp.down_proj.weight"]["local_shape"] == [128, 86]
    assert p["model.embed_tokens.weight"]["local_shape"] == [64, 128] and p["model.embed_tokens.weight"]["stage"] == 0
    assert p["lm_head.weight"]["local_shape"] == [64, 128] and p["lm_head.weight"]["stage"] == 1
    assert p["model.norm.weight"]["local_shape"] == [128] and p["model.norm.weight"]["stage"] == 1
    # MindFormers' stage rule: layer i -> min(i // ((layers + 1) // pp), pp - 1): layers 0-1 | 2-3
    assert [p[f"model.layers.{i}.input_layernorm.weight"]["stage"] for i in range(4)] == [0, 0, 1, 1]
    stage0 = sum(np.prod(v["local_shape"]) for v in p.values() if v["stage"] == 0)
    memory = plan["memory_gb"]["stage 0"]
    assert abs(memory["weights"] - stage0 * 4 / 1024 ** 3) < 1e-3
    assert abs(memory["optimizer_states"] - stage0 * 8 / 2 / 1024 ** 3) < 1e-3  # AdamW moments / dp


def test_plan_splits_experts_and_gpt2_conv1d():
    moe = MixtralConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4, n_kv_heads=4,
                        num_local_experts=8)
    plan = make_plan(moe, ParallelConfig(data_parallel=4, model_parallel=2, expert_parallel=4))
    experts = plan["parameters"]["model.layers.0.mlp.experts.gate_up_proj"]
    assert experts["shape"] == [8, 192, 64] and experts["local_shape"] == [2, 96, 64]
    assert plan["parameters"]["model.layers.0.mlp.experts.down_proj"]["local_shape"] == [2, 64, 48]
    assert plan["parameters"]["model.layers.0.mlp.gate.weight"]["local_shape"] == [8, 64]  # routers replicated
    gpt2 = make_plan(GPT2Config(vocab_size=96, hidden_size=64, num_layers=2, num_heads=4, seq_length=32),
                     ParallelConfig(model_parallel=2))["parameters"]
    assert gpt2["transformer.h.0.attn.c_attn.weight"]["local_shape"] == [64, 96]  # Conv1D [in, out]: out split
    assert gpt2["transformer.h.0.attn.c_attn.bias"]["local_shape"] == [96]
    assert gpt2["transformer.h.0.attn.c_proj.weight"]["local_shape"] == [32, 64]  # input split


def test_plan_cli_writes_json_and_refuses_impossible_splits(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert plan_main(["--config", "deepseek_v3", "--device_num", "16", "--data_parallel", "4", "--model_parallel", "2",
                      "--pipeline_stage", "2", "--micro_batch_num", "2", "--expert_parallel", "4",
                      "--optimizer_shard", "--seq_length", "4096", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "deepseek_v3 on 16 devices" in text and "model.layers.*.self_attn.kv_b_proj" in text
    plan = json.loads(out.read_text())
    assert plan["device_num"] == 16 and len(plan["parameters"]) == 967
    assert plan["parameters"]["model.layers.3.mlp.experts.gate_up_proj"]["local_shape"] == [64, 2048, 7168]
    assert plan["parameters"]["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"]["local_shape"] == [576, 7168]
    assert plan_main(["--config", "llama2_7b", "--model_parallel", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: parallel_config for LlamaConfig: model_parallel (3) must divide num_attention_heads (32)"]


def test_documented_set_parallel_config_trains_in_one_process_with_a_warning(tmp_path, caplog):
    import mindspore.dataset as ds

    from mindformers import LlamaForCausalLM

    rows = [(np.random.default_rng(i).integers(0, 256, 65).astype(np.int32),) for i in range(8)]

    def run(parallel: bool, out):
        model = LlamaForCausalLM.from_config(SMALL_LLAMA, seed=0)
        data = ds.GeneratorDataset(rows, column_names=["input_ids"], shuffle=False).batch(4)
        trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(out), max_steps=2, report_to="none",
                                                              disable_tqdm=True, logging_steps=1, save_steps=0),
                          train_dataset=data)
        if parallel:
            trainer.set_parallel_config(data_parallel=4, model_parallel=2, pipeline_stage=2, micro_batch_num=2,
                                        optimizer_shard=True)
            trainer.set_recompute_config(recompute=False, select_recompute=True)
        return [h["loss"] for h in trainer.train().log_history if "loss" in h]

    with caplog.at_level(logging.WARNING, logger="mindformers"):
        split = run(True, tmp_path / "a")
    assert any("takes no effect in a stand-alone run" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(split, run(False, tmp_path / "b"), rtol=1e-5)  # the same training


def test_run_yaml_sections_are_read(tmp_path):
    trainer = Trainer(model="gpt2", args={"training": {"output_dir": str(tmp_path)},
                                          "parallel_config": {"data_parallel": 2, "model_parallel": 2},
                                          "recompute_config": {"recompute": [2]}})
    assert trainer.parallel_config.model_parallel == 2 and trainer.recompute_config.recompute == [2]
    with pytest.raises(ValueError, match=r"parallel_config: unknown key\(s\) \['pipeline'\]"):
        Trainer(model="gpt2", args={"training": {}, "parallel_config": {"pipeline": 2}})
    assert AutoConfig.from_pretrained("gpt2").model_type == "gpt2"


def test_one_place_decides_how_a_run_splits():
    from mindformers.parallel.config import route

    split = ParallelConfig(data_parallel=2, model_parallel=2)
    assert route(split, 1, "CPU", "data_parallel") == "stand_alone"
    assert route(split, 4, "CPU", "data_parallel") == "tensor_parallel"  # msrun on CPU: explicit collectives
    assert route(ParallelConfig(model_parallel=2), 2, "CPU", "data_parallel") == "tensor_parallel"
    assert route(ParallelConfig(data_parallel=2), 2, "CPU", "data_parallel") == "data_parallel"
    assert route(ParallelConfig(), 2, "CPU", "data_parallel") == "data_parallel"  # data_parallel 1: all processes
    assert route(split, 4, "Ascend", "semi_auto_parallel") == "semi_auto_parallel"  # shard() strategies
    with pytest.raises(NotImplementedError, match="pipeline_stage/expert_parallel/optimizer_shard under msrun"):
        route(ParallelConfig(pipeline_stage=2, micro_batch_num=2), 2, "CPU", "data_parallel")
    with pytest.raises(ValueError, match=r"model_parallel \(2\) must divide the 3 processes"):
        route(ParallelConfig(model_parallel=2), 3, "CPU", "data_parallel")
    with pytest.raises(ValueError, match="start the script with msrun --worker_num=4"):
        route(split, 2, "CPU", "data_parallel")
    with pytest.raises(ValueError, match="needs data_parallel x model_parallel x pipeline_stage = 4 devices, but 8"):
        route(split, 8, "Ascend", "semi_auto_parallel")
    with pytest.raises(ValueError, match="set parallel.parallel_mode: semi_auto_parallel"):
        route(split, 4, "GPU", "data_parallel")


def test_real_size_run_configs_plan_without_weights(tmp_path, capsys):
    """The 16-device run YAMLs plan in seconds (no weights): their parallel_config / recompute_config /
    training sections are the plan's defaults, and a command-line option overrides them."""
    import os

    from tests.trainer.conftest import REPO

    out = tmp_path / "llama.json"
    assert plan_main(["--config", os.path.join(REPO, "configs", "llama2", "pretrain_7b_16p.yaml"), "--json", str(out)]) == 0
    plan = json.loads(out.read_text())
    assert plan["device_num"] == 16 and plan["parallel_config"]["pipeline_stage"] == 2
    assert plan["seq_length"] == 4096 and plan["batch_size"] == 8  # 1 per copy and micro-batch x dp 2 x micro 4
    assert plan["parameters"]["model.layers.31.mlp.down_proj.weight"] == {
        "shape": [4096, 11008], "local_shape": [4096, 2752], "stage": 1, "style": "rowwise", "trainable": True}
    stage0 = plan["memory_gb"]["stage 0"]
    assert stage0["total"] < stage0["weights"] + stage0["gradients"] + stage0["optimizer_states"] + stage0["activations"]
    out = tmp_path / "moe.json"
    assert plan_main(["--config", os.path.join(REPO, "configs", "qwen3_moe", "finetune_30b_a3b_16p.yaml"),
                      "--json", str(out), "--model_parallel", "2", "--data_parallel", "8"]) == 0
    plan = json.loads(out.read_text())
    assert plan["parallel_config"]["expert_parallel"] == 4 and plan["device_num"] == 16
    assert plan["parameters"]["model.layers.0.mlp.experts.gate_up_proj"]["local_shape"] == [32, 768, 2048]
    assert "qwen3_moe on 16 devices" in capsys.readouterr().out
