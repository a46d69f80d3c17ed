"""Where a training step's time goes: MindSpore's profiler around steps of the same run bench/train.py times.

Usage:
    python bench/profile_train.py [--mode lora|full] [--batch 4] [--seq 128] [--steps 2] [--top 12]

SmolLM2-135M-Instruct (float32) trains through ``Trainer(...).finetune()`` on the chatterbot answers, as in
bench/train.py; after two warm-up steps (the first compiles) MindSpore's profiler records --steps steps and
this prints the CPU kernel time per step by op type and the --top single kernels with their input shapes.

WARNING: kernels of one step may run at the same time on different threads, so the per-step kernel time can
exceed the wall time, and the profiler slows the steps it records; read the figures as shares. Shapes are
looked up by kernel name, which graphs may share: check a surprising one.
"""
import argparse
import collections
import csv
import glob
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import train as bench  # noqa: E402  (bench/train.py: the preset, the data, the LoRA settings)


def profile_run(args, trace_dir: str) -> None:
    import mindspore as ms

    from mindformers.trainer import TrainerCallback

    model, tokenizer, data = bench.ours(args.mode, args.batch, args.seq)
    warmup = 2

    class Profile(TrainerCallback):
        def on_step_end(self, state, logs):
            if state.global_step == warmup:
                from mindspore.profiler import ProfilerActivity, profile

                self.profiler = profile(activities=[ProfilerActivity.CPU], record_shapes=True,
                                        on_trace_ready=ms.profiler.tensorboard_trace_handler(trace_dir))
                self.profiler.start()
            elif state.global_step == warmup + args.steps:
                self.profiler.stop()

    bench.finetune(model, tokenizer, data, warmup + args.steps, args.batch, args.seq, Profile())


def summarise(trace_dir: str, steps: int, top: int) -> None:
    details = glob.glob(os.path.join(trace_dir, "*", "FRAMEWORK", "cpu_op_detail_info_0.csv"))
    if not details:
        raise SystemExit(f"the profiler wrote no CPU op table under {trace_dir}")
    framework = os.path.join(os.path.dirname(details[0]), "cpu_framework_0.txt")
    shapes = {}
    if os.path.exists(framework):
        with open(framework, encoding="utf-8") as f:
            for line in f:  # "<type>;<name>;<id>;input_1:[...];..."
                parts = line.strip().split(";")
                if len(parts) > 1:
                    shapes.setdefault(parts[1], " ".join(p.split(":", 1)[-1] for p in parts[3:] if p))
    with open(details[0], encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    per_type = collections.Counter()
    for row in rows:
        per_type[row["op_type"]] += float(row["op_total_time(ms)"]) / steps
    total = sum(per_type.values())
    print(f"CPU kernel time per step: {total:,.0f} ms (kernels of a step may overlap; read as shares)")
    for op, ms_ in per_type.most_common(top):
        print(f"  {op:<22} {ms_:>8.1f} ms  {ms_ / total:>5.1%}")
    print(f"the {top} longest kernels (ms per step, input shapes)")
    rows.sort(key=lambda r: -float(r["op_total_time(ms)"]))
    for row in rows[:top]:
        print(f"  {float(row['op_total_time(ms)']) / steps:>8.1f}  {row['full_op_name'][:70]:<70} "
              f"{shapes.get(row['op_name'], '')[:60]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["lora", "full"], default="lora")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2, help="steps recorded after two warm-up steps")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    if min(args.batch, args.seq, args.steps, args.top) < 1:
        parser.error("--batch, --seq, --steps and --top must be >= 1")
    with tempfile.TemporaryDirectory(prefix="bench-profile-trace-") as trace_dir:
        profile_run(args, trace_dir)
        summarise(trace_dir, args.steps, args.top)


if __name__ == "__main__":
    main()
