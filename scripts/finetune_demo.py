"""LoRA fine-tuning demo (`make demo`, second part): SmolLM2-135M-Instruct on the chatterbot chats, offline.

Usage:
    python scripts/finetune_demo.py [--config configs/smollm2/finetune_135m_lora.yaml] [--max-steps 40]
                                    [--output output/demo_lora] [--question "..."]

Runs the run config's LoRA fine-tuning (data from `python scripts/prepare_chatterbot.py`) for a few minutes:
the held-out loss before and after (the run fails if it does not drop), the adapter checkpoint written,
then the adapter loaded back onto a fresh base model (the PEFT way) and held-out questions answered by the
base model and by the tuned one.
"""
import argparse
import gc
import json
import os
import sys
import time

import mindspore as ms

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mindformers import AutoModel, Trainer, pipeline  # noqa: E402
from mindformers.presets import load_yaml  # noqa: E402
from mindformers.tuners import PeftModel  # noqa: E402


def held_out_questions(path: str, count: int):
    """The first user turns of the first ``count`` chats of an eval file."""
    with open(path, encoding="utf-8") as f:
        chats = [json.loads(line) for line in f if line.strip()]
    return [(c["messages"][0]["content"], c["messages"][1]["content"]) for c in chats[:count]]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/smollm2/finetune_135m_lora.yaml")
    parser.add_argument("--max-steps", type=int, default=30, help="optimizer steps (default 30: a few minutes)")
    parser.add_argument("--batch-size", type=int, default=4, help="chats per step (default 4)")
    parser.add_argument("--output", default="output/demo_lora", help="output_dir of the run (replaced)")
    parser.add_argument("--questions", type=int, default=3, help="held-out questions to answer")
    args = parser.parse_args()
    ms.runtime.launch_blocking()  # eager ops on CPU: much faster with blocking launches (MINDSPORE_CPU.md)

    run = load_yaml(args.config)
    run["training"].update(max_steps=args.max_steps, batch_size=args.batch_size, output_dir=args.output,
                           overwrite_output_dir=True,
                           logging_steps=5, eval_steps=None, save_steps=0, warmup_steps=4)
    for split in ("train_dataset", "eval_dataset"):
        if not os.path.exists(run[split]["path"]):
            raise SystemExit(f"{run[split]['path']} is missing: run `python scripts/prepare_chatterbot.py` first")
    trainer = Trainer(args=run)
    tokenizer = trainer.tokenizer
    training = trainer.args
    print(f"LoRA fine-tuning {args.config}: {args.max_steps} steps of {training.batch_size} chats "
          f"(seq_length {training.seq_length}, lr {training.learning_rate}, {training.lr_scheduler_type})")

    start = time.time()
    before = trainer.evaluate()
    print(f"held-out ({run['eval_dataset']['path']}, {trainer.args.seq_length} tokens max) before: loss {before['eval_loss']:.4f}  "
          f"perplexity {before['eval_perplexity']:.2f}  ({time.time() - start:.0f} s)")
    start = time.time()
    state = trainer.finetune()
    print(f"trained {state.global_step} steps in {time.time() - start:.0f} s "
          f"({state.tokens_seen / (time.time() - start):.0f} tokens/s including compilation and evaluation)")
    after = state.log_history[-1]
    print(f"held-out after:  loss {after['eval_loss']:.4f}  perplexity {after['eval_perplexity']:.2f}  "
          f"(before {before['eval_loss']:.4f})")
    if not after["eval_loss"] < before["eval_loss"]:
        raise SystemExit("the held-out loss did not drop")

    checkpoint = os.path.join(args.output, f"checkpoint-{state.global_step}")
    sizes = {name: os.path.getsize(os.path.join(checkpoint, name)) for name in sorted(os.listdir(checkpoint))}
    print(f"adapter checkpoint {checkpoint}: " + ", ".join(f"{n} ({s / 1e6:.2f} MB)" for n, s in sizes.items()))

    # The adapter on a fresh copy of the base model, as a user would load it (the trainer's model, its
    # compiled graphs and their buffers are released first).
    del trainer, state
    gc.collect()
    base = AutoModel.from_pretrained(args.config, pet_config=None)
    tuned = PeftModel.from_pretrained(base, checkpoint)
    chat = pipeline("text_generation", model=tuned, tokenizer=tokenizer, max_new_tokens=40)
    print("\nheld-out questions (greedy):")
    for question, reference in held_out_questions(run["eval_dataset"]["path"], args.questions):
        messages = [{"role": "user", "content": question}]
        with tuned.disable_adapter():
            plain = chat(messages, do_sample=False)[0]["text_generation_text"][0]
        answer = chat(messages, do_sample=False)[0]["text_generation_text"][0]
        print(f"  user:       {question}\n  corpus:     {reference}\n  base model: {plain.strip()}\n"
              f"  with LoRA:  {answer.strip()}\n")


if __name__ == "__main__":
    main()
