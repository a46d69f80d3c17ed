"""MindSpore's dry run (simulated Ascend devices, stub CANN libraries built by mindformers.parallel.cannstub)
compiles the real semi-auto-parallel training step, and the per-device shapes it gives each parameter equal
the plan's (python -m mindformers.parallel.plan).

Llama- and MoE-shaped (expert parallel) models, scaled down with real ratios to two layers (one per pipeline
stage; a compile's time grows with the layers): 8 devices (dp2 x mp4) and 16
(dp2 x mp4 x pp2, 4 micro-batches, optimizer shard), the first rank of each pipeline stage; an MLA-shaped
model (DeepSeek-V3) and a Llama with LoRA on 8 devices."""
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from mindformers import DeepseekV3Config, LlamaConfig, ParallelConfig, Qwen3MoeConfig
from mindformers.parallel.cannstub import missing_tools
from mindformers.parallel.dryrun import DryRunError, compile_step
from mindformers.parallel.plan import main as plan_main
from mindformers.parallel.plan import make_plan

if missing_tools():
    pytest.skip(f"the dry run builds stub CANN libraries with {', '.join(missing_tools())} (not installed)",
                allow_module_level=True)

# Llama-2 7B's ratios: heads of 128 -> 32 here, ffn 11008/4096 of the hidden size
LLAMA = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                    num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=32)
# Qwen3-30B-A3B's: 128 experts of width 768 for hidden 2048, 8 per token, GQA 32/4 -> 8 experts, 2 per token
MOE = Qwen3MoeConfig(vocab_size=512, hidden_size=128, intermediate_size=384, moe_intermediate_size=48,
                     num_experts=8, num_experts_per_tok=2, num_hidden_layers=2, num_attention_heads=8,
                     num_key_value_heads=4, head_dim=16, max_position_embeddings=32)
# DeepSeek-V3's multi-head latent attention and grouped routing, first layer dense
MLA = DeepseekV3Config(vocab_size=512, hidden_size=128, intermediate_size=352, moe_intermediate_size=32,
                       num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=8, q_lora_rank=48,
                       kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=8,
                       n_shared_experts=1, num_experts_per_tok=2, n_group=4, topk_group=2, first_k_dense_replace=1,
                       max_position_embeddings=32)

EIGHT = dict(data_parallel=2, model_parallel=4)
SIXTEEN = dict(data_parallel=2, model_parallel=4, pipeline_stage=2, micro_batch_num=4, optimizer_shard=True)


# LoRA on a column-parallel (q_proj) and a row-parallel (o_proj) projection: its factors take the base's split
LLAMA_LORA = LLAMA.replace(pet_config={"pet_type": "lora", "lora_rank": 8, "lora_alpha": 16,
                                       "target_modules": ".*q_proj|.*o_proj"})
CASES = {"llama": LLAMA, "moe": MOE, "mla": MLA, "llama_lora": LLAMA_LORA}
# Llama and MoE on 8 devices and on both pipeline stages of 16 (the checkpoint tests below need every stage's
# strategy); MLA and LoRA on 8 (their pipeline split is the Llama's)
COMPILES = [(name, devices, rank) for name in ("llama", "moe") for devices, rank in ((8, 0), (16, 0), (16, 8))]
COMPILES += [("mla", 8, 0), ("llama_lora", 8, 0)]


def _split(name, devices):
    split = EIGHT if devices == 8 else SIXTEEN
    return ParallelConfig(**(split if name.startswith("llama") else dict(split, expert_parallel=2)))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Every (model, devices, rank) compiled once; MindSpore's strategy files kept in
    ``<dir>/<model>_<devices>/strategy_rank<r>.ckpt`` (the checkpoint split/merge tests below read them)."""
    out = tmp_path_factory.mktemp("dryrun")

    def run(case):
        name, devices, rank = case
        folder = out / f"{name}_{devices}"
        folder.mkdir(exist_ok=True)
        return compile_step(CASES[name], _split(name, devices), rank,
                            strategy_file=str(folder / f"strategy_rank{rank}.ckpt"))

    # each compile is its own mostly single-threaded process: two at a time on two cores (the first alone
    # builds the stub libraries)
    results = {COMPILES[0]: run(COMPILES[0])}
    with ThreadPoolExecutor(max_workers=2) as pool:
        results.update(zip(COMPILES[1:], pool.map(run, COMPILES[1:])))
    return out, results


@pytest.mark.parametrize("name, devices, rank", COMPILES)
def test_mindspore_shapes_equal_the_plan(compiled, name, devices, rank):
    config, parallel = CASES[name], _split(name, devices)
    result = compiled[1][name, devices, rank]
    plan = make_plan(config, parallel)
    assert result["compiled"]
    stage = rank // (parallel.device_num // parallel.pipeline_stage)
    held = {n for n, p in plan["parameters"].items() if p["stage"] == stage}
    assert set(result["parameters"]) == held  # the rank holds its stage's parameters, no others
    split_somewhere = 0
    for n, shape in result["parameters"].items():
        assert shape == plan["parameters"][n]["local_shape"], n
        split_somewhere += shape != plan["parameters"][n]["shape"]
    assert split_somewhere >= 4  # not everything replicated
    if parallel.optimizer_shard:  # kept split further over data_parallel between steps
        assert result["stored"]
    if name == "moe" and stage == 0:  # experts split by expert_parallel, their widths by model_parallel
        assert result["parameters"]["model.layers.0.mlp.experts.gate_up_proj"] == [4, 24, 128]
    if name == "llama_lora":  # B split with a column-parallel base, A with a row-parallel one
        shapes = result["parameters"]
        assert shapes["model.layers.0.self_attn.q_proj.lora_B.default.weight"] == [64, 8]
        assert shapes["model.layers.0.self_attn.q_proj.lora_A.default.weight"] == [8, 256]
        assert shapes["model.layers.0.self_attn.o_proj.lora_A.default.weight"] == [8, 64]
        assert shapes["model.layers.0.self_attn.o_proj.lora_B.default.weight"] == [256, 8]
    assert (compiled[0] / f"{name}_{devices}" / f"strategy_rank{rank}.ckpt").is_file()


def test_documented_example_compiles_for_16_ranks(tmp_path, capsys):
    """Trainer.set_parallel_config(data_parallel=4, model_parallel=2, pipeline_stage=2, micro_batch_num=2,
    optimizer_shard=True), through the CLI: the plan with MindSpore's shapes for rank 8 beside it."""
    LLAMA.save_pretrained(str(tmp_path / "llama"))
    code = plan_main(["--config", str(tmp_path / "llama"), "--data_parallel", "4", "--model_parallel", "2",
                      "--pipeline_stage", "2", "--micro_batch_num", "2", "--optimizer_shard", "--dryrun", "--rank", "8",
                      "--json", str(tmp_path / "plan.json"), "--strategy_file", str(tmp_path / "strategy_rank8.ckpt")])
    out = capsys.readouterr().out
    assert code == 0
    plan = json.loads((tmp_path / "plan.json").read_text())
    dryrun = plan["dryrun"]
    assert plan["device_num"] == 16 and dryrun["rank"] == 8 and dryrun["compiled"]
    assert "model.layers.1.mlp.down_proj.weight" in dryrun["parameters"]  # stage 1 holds the upper layer
    assert "model.layers.0.mlp.down_proj.weight" not in dryrun["parameters"]
    assert "model.embed_tokens.weight" not in dryrun["parameters"]
    for name, shape in dryrun["parameters"].items():
        assert shape == plan["parameters"][name]["local_shape"], name
    assert dryrun["parameters"]["model.layers.1.self_attn.q_proj.weight"] == [128, 256]
    assert "all shaped as planned" in out and "MindSpore, rank 8" in out
    assert (tmp_path / "strategy_rank8.ckpt").stat().st_size > 0  # for python -m mindformers.parallel.checkpoint


def test_mindspore_refusals_come_back_as_one_line(tmp_path, capsys):
    # a rank outside the devices, and a split MindSpore cannot compile (checked before MindSpore sees it)
    with pytest.raises(ValueError, match=r"rank must be an integer in \[0, 8\) for 8 devices, found 8"):
        compile_step(LLAMA, ParallelConfig(**EIGHT), rank=8)
    LLAMA.save_pretrained(str(tmp_path / "llama"))
    code = plan_main(["--config", str(tmp_path / "llama"), "--model_parallel", "16", "--dryrun"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "model_parallel (16) must divide num_attention_heads (8)" in err
    assert issubclass(DryRunError, RuntimeError)


@pytest.mark.parametrize("name", ["llama", "moe"])
def test_checkpoints_split_for_a_strategy_and_merge_back_exactly(compiled, name, tmp_path):
    """MindFormers' auto_trans_ckpt through MindSpore's transform functions, with the strategy files the dry
    runs wrote: a Hugging Face directory -> 8 ranks (dp2 x mp4) -> back, and -> 16 ranks (dp2 x mp4 x pp2,
    optimizer shard; one strategy file per stage) -> back; every tensor equal."""
    import mindspore as ms

    from mindformers import AutoModel
    from mindformers.checkpoint.safetensors_dir import load_state_dict
    from mindformers.parallel.checkpoint import main as checkpoint_main

    model = AutoModel.from_config(CASES[name], seed=0)
    model.save_pretrained(str(tmp_path / "hf"))
    original = load_state_dict(str(tmp_path / "hf"))
    for devices, strategy in ((8, compiled[0] / f"{name}_8" / "strategy_rank0.ckpt"), (16, compiled[0] / f"{name}_16")):
        ranks, back = tmp_path / f"ranks{devices}", tmp_path / f"back{devices}"
        assert checkpoint_main(["split", "--src", str(tmp_path / "hf"), "--strategy", str(strategy),
                                "--out", str(ranks)]) == 0
        assert len(list(ranks.glob("rank_*"))) == devices
        if devices == 8:  # rank 3 = data-parallel copy 0, model-parallel slice 3: q_proj rows 3/4 to the end
            q = ms.load_checkpoint(str(next((ranks / "rank_3").glob("*.ckpt"))))["model.layers.0.self_attn.q_proj.weight"]
            rows = original["model.layers.0.self_attn.q_proj.weight"].shape[0]
            assert (q.asnumpy() == original["model.layers.0.self_attn.q_proj.weight"][rows * 3 // 4:]).all()
        assert checkpoint_main(["merge", "--src", str(ranks), "--strategy", str(strategy), "--out", str(back),
                                "--config", str(tmp_path / "hf")]) == 0
        merged = load_state_dict(str(back))
        assert merged.keys() == original.keys()
        for key, value in original.items():
            assert (merged[key] == value).all(), (devices, key)
