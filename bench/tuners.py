"""Every tuner method on SmolLM2-135M-Instruct fine-tuned on the chatterbot chats, side by side.

    python bench/tuners.py [--steps 15] [--methods lora,ia3,...] [--eval-chats 32]

For each method: the trainable parameters, optimizer steps per second after the first (compiling) step, and
the held-out loss (the first ``--eval-chats`` chats of output/chatterbot/eval.jsonl) before and after
``--steps`` steps of 4 chats (128 tokens, AdamW, the method's usual learning rate). Needs
``python scripts/prepare_chatterbot.py`` first. Prints a Markdown table (README, Tuners).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import mindspore as ms
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mindformers import AutoModel, AutoTokenizer, Trainer, TrainingArguments  # noqa: E402
from mindformers.trainer.callbacks import TrainerCallback  # noqa: E402
from mindformers.tuners import (  # noqa: E402
    AdaLoraConfig,
    AdapterConfig,
    AdaptionPromptConfig,
    FourierFTConfig,
    IA3Config,
    LLaMAProConfig,
    LoHaConfig,
    LoKrConfig,
    LongLoRAConfig,
    LoraConfig,
    NEFTuneConfig,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    ResTuningConfig,
    SideConfig,
    Swift,
    VeraConfig,
    get_peft_model,
)

PRESET = "smollm2_135m_instruct"
QV = ["q_proj", "v_proj"]
# method -> (config (None: the model itself trains), learning rate, SWIFT API?[, extra TrainingArguments])
METHODS = {
    "lora": (lambda: LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]), 2e-3, False),
    "ia3": (lambda: IA3Config(), 1e-2, False),
    "loha": (lambda: LoHaConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]), 2e-3, False),
    "lokr": (lambda: LoKrConfig(r=8, alpha=16, target_modules=["q_proj", "v_proj"]), 2e-3, False),
    "prompt_tuning": (lambda: PromptTuningConfig(num_virtual_tokens=16, prompt_tuning_init="TEXT",
                                                 prompt_tuning_init_text="Answer the question briefly.",
                                                 tokenizer_name_or_path=PRESET), 1e-2, False),
    "p_tuning": (lambda: PromptEncoderConfig(num_virtual_tokens=16, encoder_hidden_size=128), 1e-3, False),
    "adapter": (lambda: AdapterConfig(dim=576, target_modules=["mlp"], adapter_length=32), 1e-3, True),
    "llama_pro": (lambda: LLaMAProConfig(num_new_blocks=3), 1e-4, True),
    "neftune": (lambda: NEFTuneConfig(noise_alpha=5.0), 2e-5, True),
    "prefix_tuning": (lambda: PrefixTuningConfig(num_virtual_tokens=16), 1e-2, False),
    "adaption_prompt": (lambda: AdaptionPromptConfig(adapter_len=10, adapter_layers=15), 1e-2, False),
    "longlora": (lambda: LongLoRAConfig(r=8, lora_alpha=16, target_modules=QV), 2e-3, True),
    "vera": (lambda: VeraConfig(r=256, target_modules=QV), 1e-2, False),
    "fourierft": (lambda: FourierFTConfig(n_frequency=1000, scaling=300.0, target_modules=QV), 1e-2, False),
    "adalora": (lambda: AdaLoraConfig(init_r=12, target_r=8, total_step=10, tinit=2, tfinal=3, deltaT=1,
                                      target_modules=QV), 2e-3, False),
    "side": (lambda: SideConfig(target_modules=r"model\.layers\.29"), 1e-3, True),
    "restuning": (lambda: ResTuningConfig(root_modules=r".*layers.0$", stem_modules=r".*layers\.\d+$",
                                          target_modules=r".*model.norm", tuner_cfg="res_adapter"), 1e-3, True),
    "lisa": (None, 1e-4, False, {"lisa_activated_layers": 2, "lisa_step_interval": 5}),
    "galore": (None, 1e-4, False, {"optim": "galore_adamw", "optim_target_modules": ["self_attn", "mlp"],
                                   "optim_args": "rank=64, update_proj_gap=50, scale=0.25"}),
}


class _StepClock(TrainerCallback):
    def __init__(self):
        self.times = []

    def on_step_end(self, state, logs):
        self.times.append(time.perf_counter())


def run(method: str, steps: int, eval_path: str, train_path: str) -> dict:
    make, lr, swift, *extra = METHODS[method]
    base = AutoModel.from_pretrained(PRESET)
    if make is None:  # LISA, GaLore: the model's own weights train, as the TrainingArguments say
        model = base
        params = list(model.get_parameters())
        total = sum(int(np.prod(p.shape)) for p in params)
        trainable = (sum(int(np.prod(p.shape)) for p in params if p.requires_grad) if method != "lisa"
                     else None)  # LISA's set changes every period
    else:
        model = Swift.prepare_model(base, make(), seed=0) if swift else get_peft_model(base, make(), seed=0)
        trainable, total = model.get_nb_trainable_parameters()
    clock = _StepClock()
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, max_steps=steps, batch_size=4, seq_length=128, learning_rate=lr,
                                 warmup_steps=2, logging_steps=steps, save_steps=0, disable_tqdm=True, report_to=[],
                                 **(extra[0] if extra else {}))
        trainer = Trainer(model=model, tokenizer=AutoTokenizer.from_pretrained(PRESET), args=args,
                          train_dataset=train_path, eval_dataset=eval_path, callbacks=[clock])
        before = trainer.evaluate()["eval_loss"]
        trainer.train()
        after = trainer.evaluate()["eval_loss"]
    per_step = (clock.times[-1] - clock.times[0]) / max(len(clock.times) - 1, 1)
    return {"method": method, "trainable": trainable, "total": total, "steps_per_second": 1.0 / per_step,
            "eval_before": before, "eval_after": after}


def _count(r: dict) -> str:
    if r["trainable"] is None:
        return "changes each period"
    return f"{r['trainable']:,} ({100 * r['trainable'] / r['total']:.2f}%)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--eval-chats", type=int, default=32)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # run one method in this process (the driver's child)
    args = parser.parse_args()
    ms.runtime.launch_blocking()
    data = os.path.join("output", "chatterbot")
    if not os.path.exists(os.path.join(data, "train.jsonl")):
        raise SystemExit("output/chatterbot/train.jsonl is missing: run `python scripts/prepare_chatterbot.py` first")
    with open(os.path.join(data, "eval.jsonl"), encoding="utf-8") as f:
        chats = [line for line in f if line.strip()][: args.eval_chats]
    eval_path = os.path.join(tempfile.mkdtemp(), "eval.jsonl")
    with open(eval_path, "w", encoding="utf-8") as f:
        f.writelines(chats)
    if args.one:
        print("RESULT " + json.dumps(run(args.one, args.steps, eval_path, os.path.join(data, "train.jsonl"))))
        return
    rows = []
    for method in args.methods.split(","):
        # each method in its own process: one process running them all grew past 24 GB and was killed
        done = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", method, "--steps", str(args.steps),
                               "--eval-chats", str(args.eval_chats)], capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not lines:
            print(f"{method}: failed (exit {done.returncode}): {done.stderr.strip()[-300:]}", flush=True)
            continue
        rows.append(json.loads(lines[-1][len("RESULT "):]))
        r = rows[-1]
        print(f"{method}: {_count(r)} trainable, {r['steps_per_second']:.2f} steps/s, held-out loss "
              f"{r['eval_before']:.4f} -> {r['eval_after']:.4f}", flush=True)
    print("\n| method | trainable parameters | steps/s | held-out loss before | after |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {_count(r)} | "
              f"{r['steps_per_second']:.2f} | {r['eval_before']:.4f} | {r['eval_after']:.4f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
