"""The Trainer and the text_generation pipeline on the new families: a tiny Mixtral LoRA fine-tune (experts
included) logs the router's load-balancing loss and lowers the loss; Qwen3 and DeepSeek-V3 train in full."""
import json

import numpy as np
import pytest

from mindformers import (
    DeepseekV3Config,
    DeepseekV3ForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    Trainer,
    TrainingArguments,
    pipeline,
)
from mindformers.tuners import LoraConfig, PeftModel, get_peft_model

SMOL = dict(vocab_size=49152, hidden_size=32, num_layers=2, num_heads=4, n_kv_heads=2, tie_word_embeddings=True,
            bos_token_id=1, eos_token_id=2, pad_token_id=2, seq_length=256)


def args(tmp_path, **fields):
    return TrainingArguments(**{"output_dir": str(tmp_path / "out"), "seq_length": 64, "batch_size": 4,
                                "learning_rate": 1e-2, "warmup_steps": 0, "disable_tqdm": True,
                                "report_to": ["jsonl"], "logging_steps": 1, **fields})


def losses(state, key="loss"):
    return [h[key] for h in state.log_history if key in h]


def test_mixtral_lora_finetune_reports_the_aux_loss(tmp_path, tok, small_chats):
    config = MixtralConfig(**SMOL, intermediate_size=48, num_local_experts=4, num_experts_per_tok=2,
                           output_router_logits=True, router_aux_loss_coef=0.02, initializer_range=0.3)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights="gaussian",
                      target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"])
    model = get_peft_model(MixtralForCausalLM.from_config(config, seed=0), lora)
    state = Trainer(model=model, tokenizer=tok, args=args(tmp_path, max_steps=8, learning_rate=5e-2),
                    train_dataset=small_chats[0]).finetune()
    loss, aux = losses(state), losses(state, "aux_loss")
    assert len(loss) == len(aux) == 8
    assert np.mean(loss[-3:]) < np.mean(loss[:3]) - 0.3, loss
    assert all(1.0 <= a <= 4.0 for a in aux), aux  # E * sum f_e P_e: 1 when balanced, at most top_k * E / top_k
    records = [json.loads(line) for line in open(tmp_path / "out" / "metrics.jsonl")]
    assert all("aux_loss" in r for r in records if "loss" in r)
    # evaluation: eval_loss and eval_perplexity of the cross entropy, the load-balancing loss on its own
    metrics = Trainer(model=model, tokenizer=tok, args=args(tmp_path / "eval"), eval_dataset=small_chats[1]).evaluate()
    assert 1.0 <= metrics["eval_aux_loss"] <= 4.0
    assert abs(metrics["eval_perplexity"] - np.exp(metrics["eval_loss"])) < 1e-3 * metrics["eval_perplexity"]
    base = model.get_base_model()  # the same model without the aux term: the same eval_loss
    base.config.output_router_logits = False
    base.aux_loss = base.config.aux_loss_settings()
    plain = Trainer(model=model, tokenizer=tok, args=args(tmp_path / "eval2"), eval_dataset=small_chats[1]).evaluate()
    assert abs(plain["eval_loss"] - metrics["eval_loss"]) < 1e-4 and "eval_aux_loss" not in plain
    checkpoint = tmp_path / "out" / "checkpoint-8"
    reloaded = PeftModel.from_pretrained(MixtralForCausalLM.from_config(config, seed=0), str(checkpoint))
    ids = tok("Hello there, how are you?", return_tensors="ms")["input_ids"]
    np.testing.assert_allclose(reloaded(ids).asnumpy(), model(ids).asnumpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["qwen3", "deepseek_v3"])
def test_full_training_lowers_the_loss(tmp_path, tok, small_chats, family):
    if family == "qwen3":
        model = Qwen3ForCausalLM.from_config(Qwen3Config(**SMOL, intermediate_size=64, head_dim=16), seed=0)
    else:
        model = DeepseekV3ForCausalLM.from_config(DeepseekV3Config(
            **{**SMOL, "n_kv_heads": 4}, intermediate_size=64, moe_intermediate_size=16, q_lora_rank=16, kv_lora_rank=16,
            qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, n_routed_experts=4, n_group=2, topk_group=1,
            num_experts_per_tok=2, first_k_dense_replace=1), seed=0)
    state = Trainer(model=model, tokenizer=tok, args=args(tmp_path, max_steps=8, learning_rate=1e-2),
                    train_dataset=small_chats[0]).train()
    loss = losses(state)
    assert np.mean(loss[-2:]) < np.mean(loss[:2]) - 0.3, loss
    assert not losses(state, "aux_loss")  # no load-balancing loss: Qwen3 is dense, DeepSeek-V3 balances by bias


def test_text_generation_pipeline_runs_a_new_family(tok):
    model = Qwen3ForCausalLM.from_config(Qwen3Config(**SMOL, intermediate_size=64, head_dim=16), seed=1)
    generator = pipeline("text_generation", model=model, tokenizer=tok, max_new_tokens=6, do_sample=False)
    text = generator("Hello there")[0]["text_generation_text"][0]
    ids = tok("Hello there")["input_ids"]
    expected = model.generate([ids], max_new_tokens=6, do_sample=False)[0]
    assert text == tok.decode(expected, skip_special_tokens=True)
