"""What the first call of each compiled step costs (MindSpore's graph compile), SmolLM2-135M-Instruct fp32, CPU.

Usage:
    python bench/compile.py [--cases generate,evaluate,lora,full] [--json FILE]

Every user and every CI run pays this once per process and graph shape, before the first token or step. Each
case runs in a fresh process (no graph, no parsed source cached), through the public API:
- generate: ``model.generate`` of a 20-token prompt, 8 new tokens, batch 1 (the prefill and the decode graph);
- evaluate: ``Trainer.evaluate`` on 8 packed chatterbot rows, batch 4 x 128 (the evaluation graph);
- lora / full: bench/train.py's ``Trainer.finetune`` run for 3 steps, batch 4 x 128, LoRA r=8 on q,v or every
  weight (the training step graph with its update).
A case's compile cost = its first call's time - the same call's time once compiled (the median of the later
calls: generations 2-3, evaluations 2-3, steps 2-3), so it counts the compile alone, not the work.

To compare two commits, run the script from a worktree of each (it imports the mindformers beside it).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from train import finetune, ours  # bench/train.py: the same model, data and fine-tuning run

CASES = ("generate", "evaluate", "lora", "full")
BATCH, SEQ = 4, 128


def case_generate(model, tokenizer, data):
    prompt = tokenizer("Write a short note about the sea and the wind on the shore.")["input_ids"][:20]
    times = []
    for _ in range(3):
        start = time.perf_counter()
        model.generate([prompt], max_new_tokens=8, eos_token_id=[])
        times.append(time.perf_counter() - start)
    return times


def case_evaluate(model, tokenizer, data):
    from mindformers import Trainer, TrainingArguments

    with tempfile.TemporaryDirectory(prefix="bench-compile-") as out:
        args = TrainingArguments(output_dir=out, eval_batch_size=BATCH, seq_length=SEQ, report_to=[],
                                 disable_tqdm=True, pad_to_multiple_of=SEQ)
        trainer = Trainer(task="text_generation", model=model, tokenizer=tokenizer, args=args,
                          eval_dataset=data.subset(list(range(2 * BATCH))))
        times = []
        for _ in range(3):
            start = time.perf_counter()
            trainer.evaluate()
            times.append(time.perf_counter() - start)
    return times


def case_train(model, tokenizer, data):
    """Three steps of bench/train.py's fine-tuning run, each timed."""
    from mindformers.trainer import TrainerCallback

    times, started = [], []

    class Clock(TrainerCallback):
        def on_step_begin(self, state, model):
            started.append(time.perf_counter())

        def on_step_end(self, state, logs):
            times.append(time.perf_counter() - started[-1])

    finetune(model, tokenizer, data, 3, BATCH, SEQ, Clock())
    return times


def run_case(case: str) -> dict:
    # bench/train.py's model (LoRA r=8 on q,v for "lora"), tokenizer and packed chatterbot rows
    model, tokenizer, data = ours("lora" if case == "lora" else "full", BATCH, SEQ)
    run = {"generate": case_generate, "evaluate": case_evaluate}.get(case, case_train)
    times = run(model, tokenizer, data)
    later = statistics.median(times[1:])
    return {"case": case, "first_s": times[0], "later_s": later, "compile_s": times[0] - later}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # one case, in this process
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case)), flush=True)
        return 0
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    rows = []
    print(f"{'case':<10}{'first call s':>14}{'compiled s':>12}{'compile s':>11}", flush=True)
    for case in cases:
        done = subprocess.run([sys.executable, os.path.abspath(__file__), "--case", case],
                              capture_output=True, text=True)
        if done.returncode:
            print(f"{case:<10} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{case:<10}{row['first_s']:>14.2f}{row['later_s']:>12.2f}{row['compile_s']:>11.2f}", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 0 if len(rows) == len(cases) else 1


if __name__ == "__main__":
    sys.exit(main())
