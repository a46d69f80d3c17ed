"""Training speed of SmolLM2-135M-Instruct: mindformers Trainer vs transformers + PEFT (PyTorch), CPU.

Usage:
    python bench/train.py [--batch 4] [--seq 128] [--steps 5] [--warmup 2] [--rounds 3] [--modes lora,full] [--threads 2]
    (needs `pip install -e .[bench]`, i.e. torch==2.13.0, transformers and peft; `make bench` does it)

Two modes: LoRA (r=8, alpha=16 on q_proj and v_proj, no dropout) and full fine-tuning. Both sides start
from the same float32 weights (our ``AutoModel.from_pretrained("smollm2_135m_instruct")``, whose
``state_dict()`` the transformers ``LlamaForCausalLM`` loads), train with AdamW (lr 1e-4, no weight decay,
linear decay), clip the gradient norm to 1.0 and see the same batches: the chatterbot answers packed into
rows of exactly --seq tokens (no padding), in the order our Trainer draws them.
- ours goes through the public API as a user would: ``Trainer(...).finetune()``, with a callback that
  times the steps (the first --warmup steps, which compile the step graph, are not timed);
- theirs is a plain PyTorch loop: forward with labels, backward, ``clip_grad_norm_``, ``AdamW.step``.
Each (mode, side) runs in its own process with --threads CPU threads (ours, at the machine's width, without
OMP_NUM_THREADS, as a user's process: bench/sides.py side_env). Each side warms up, then rounds of
--steps steps alternate between the two processes; figures are medians over --rounds:
- train tokens/s   = batch * seq * steps / time of the round's steps (ours / theirs: higher is better for us);
- forward tokens/s = batch * seq / time of one forward pass with the loss and no gradients (compiled on
  our side; evaluation mode), measured after the timed steps (so that neither side's training peak holds
  a forward-only graph's buffers); with the step time it shows where a step's time goes.
- model FLOP rate = the step's matmul FLOPs (PaLM's count, ``step_flops``) / step time, as a fraction of the
  fp32 matmul peak measured in the same run (2048^3, best of PyTorch and numpy, --threads threads);
- peak RSS = the highest resident set size of each side's process during its timed steps (the peak is reset
  after the warm-up: model, optimizer state and activations, not the loading).
Before timing, each side reports its loss on the first batch, which must agree to ~1e-4.

Our full fine-tuning step compiles in ~35 s and needs ~4 GB at its peak (batch 4 x 128), the LoRA step
~40 s and ~2.8 GB (bench/compile.py times the compiles). A side that fails is reported and the other modes
still run.
"""
import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from sides import SideFailed, peak_rss_mb, print_targets, read_reply, reply, reset_peak_rss, side_env, target

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)  # this checkout's mindformers, not an installed one (a worktree measures its own code)
PRESET = "smollm2_135m_instruct"
CORPUS = os.path.join(ROOT, "output", "chatterbot", "train.jsonl")
SEED = 42  # the Trainer's data order (and our LoRA initialisation)
LEARNING_RATE = 1e-4
MAX_GRAD_NORM = 1.0
LORA = dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
MODES = ("lora", "full")
FORWARD_REPEATS = 3


def training_data(tokenizer, batch, seq):
    """The chatterbot answers as plain text, packed into rows of exactly ``seq`` tokens; a multiple of
    ``batch`` rows, so every batch has the same shape and no padding."""
    from mindformers.dataset import build_dataset

    if not os.path.exists(CORPUS):
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "prepare_chatterbot.py")], check=True,
                       stdout=sys.stderr)
    with open(CORPUS, encoding="utf-8") as f:
        answers = [m["content"] for line in f if line.strip()
                   for m in json.loads(line)["messages"] if m["role"] == "assistant"]
    data = build_dataset([{"text": text} for text in answers], tokenizer, seq_length=seq)
    full = [i for i, length in enumerate(data.lengths) if length == seq]  # the last packed row is shorter
    full = full[:len(full) // batch * batch]
    if not full:
        raise SystemExit(f"the corpus packs into {len(data)} rows of {seq} tokens, fewer than --batch {batch}")
    return data.subset(full)


def batch_stream(data, batch, seq):
    """Batches in the order our Trainer draws them (its seed, one shuffle per epoch), epoch after epoch."""
    for epoch in itertools.count():
        yield from data.batches(batch, shuffle=True, seed=SEED, epoch=epoch, pad_to_multiple_of=seq)


def ours(mode: str, batch: int, seq: int):
    """Our side's (model, tokenizer, data): SmolLM2 in float32, with LoRA in mode "lora"."""
    import mindspore as ms

    from mindformers import AutoModel, AutoTokenizer
    from mindformers.tuners import LoraConfig, get_peft_model

    ms.set_context(device_target="CPU")
    model = AutoModel.from_pretrained(PRESET)  # float32
    tokenizer = AutoTokenizer.from_pretrained(PRESET)
    if mode == "lora":
        model = get_peft_model(model, LoraConfig(**LORA), seed=SEED)
    return model, tokenizer, training_data(tokenizer, batch, seq)


def finetune(model, tokenizer, data, steps: int, batch: int, seq: int, callback) -> None:
    """``steps`` steps of ``Trainer(...).finetune()`` as a user runs it (the run's settings above, a loss logged
    every step), with ``callback``."""
    from mindformers import Trainer, TrainingArguments

    with tempfile.TemporaryDirectory(prefix="bench-train-") as output_dir:
        training = TrainingArguments(
            max_steps=steps, batch_size=batch, seq_length=seq, learning_rate=LEARNING_RATE,
            max_grad_norm=MAX_GRAD_NORM, seed=SEED, logging_steps=1, save_steps=0, report_to=[], disable_tqdm=True,
            output_dir=output_dir, pad_to_multiple_of=seq)
        trainer = Trainer(task="text_generation", model=model, tokenizer=tokenizer, args=training,
                          train_dataset=data, callbacks=[callback])
        trainer.finetune()  # with a model instance: trains that instance as it is


def run_mindformers(args):
    import mindspore as ms

    from mindformers.trainer import TrainerCallback

    model, tokenizer, data = ours(args.mode, args.batch, args.seq)
    trainable = sum(int(p.size) for p in model.trainable_params())

    class Pace(TrainerCallback):
        """Hands control to the parent after the warm-up steps and after every --steps steps."""

        def __init__(self):
            self.first_loss, self.start = None, None

        def on_step_end(self, state, logs):
            if state.global_step == 1:
                self.first_loss = logs["loss"]  # logging_steps=1: every step logs its loss
            done = state.global_step - args.warmup
            if done < 0 or done % args.steps:
                return
            if done == 0:
                reply({"first_loss": self.first_loss, "trainable": trainable, "flop_shape": flop_shape(model.config)})
                reset_peak_rss()  # the peak of the timed steps alone (model, optimizer state, activations)
            else:
                reply({"time": time.perf_counter() - self.start, "peak_mb": peak_rss_mb()})
            if state.global_step < state.max_steps:
                if not sys.stdin.readline():  # the other side's turn; the next line starts our next round
                    sys.exit("the parent process has gone")
                self.start = time.perf_counter()

    finetune(model, tokenizer, data, args.warmup + args.rounds * args.steps, args.batch, args.seq, Pace())

    # After training, so that the training peak is that of a process that only trains (a freed graph's
    # buffers stay in MindSpore's memory pool and would be reused by the step's)
    first = next(batch_stream(data, args.batch, args.seq))
    ids, mask, labels = (ms.Tensor(first[k]) for k in ("input_ids", "attention_mask", "labels"))
    model.set_train(False)
    if not sys.stdin.readline():  # our turn
        sys.exit("the parent process has gone")

    @ms.jit
    def forward(ids, mask, labels):  # the loss alone: no gradients, no update
        return model(ids, mask, None, labels)[0]

    reply({"forward_time": forward_time(lambda: forward(ids, mask, labels).asnumpy())})  # .asnumpy() waits


def run_transformers(args):
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    torch.set_num_threads(args.threads)
    from mindformers import AutoModel, AutoTokenizer

    ours = AutoModel.from_pretrained(PRESET)  # the same weights and config, under Hugging Face names
    config = transformers.LlamaConfig(**ours.config.to_hf_dict("LlamaForCausalLM"))
    weights = {name: torch.from_numpy(array) for name, array in ours.state_dict().items()}
    data = training_data(AutoTokenizer.from_pretrained(PRESET), args.batch, args.seq)
    del ours
    model = transformers.LlamaForCausalLM(config).float()
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # tied embeddings: lm_head.weight is embed_tokens.weight, so our checkpoint has no lm_head
    if unexpected or set(missing) - {"lm_head.weight"} or model.lm_head.weight is not model.model.embed_tokens.weight:
        raise SystemExit(f"our weights do not fit transformers' LlamaForCausalLM: missing {missing}, "
                         f"unexpected {unexpected}")
    if args.mode == "lora":
        model = get_peft_model(model, LoraConfig(**LORA))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    total_steps = args.warmup + args.rounds * args.steps
    optimizer = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=0.0)
    # linear decay to 0, like our Trainer's default schedule
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total_steps))
    batches = ({k: torch.from_numpy(v).long() for k, v in b.items()} for b in batch_stream(data, args.batch, args.seq))

    def loss_of(batch):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                     use_cache=False).loss

    def step(batch):
        loss = loss_of(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    first = next(batches)
    first_loss = step(first)
    for _ in range(args.warmup - 1):
        step(next(batches))
    reply({"first_loss": first_loss, "trainable": sum(p.numel() for p in params)})
    reset_peak_rss()
    for _ in range(args.rounds):  # one round per request, so the parent can alternate the two sides
        if not sys.stdin.readline():
            sys.exit("the parent process has gone")
        start = time.perf_counter()
        for _ in range(args.steps):
            step(next(batches))
        reply({"time": time.perf_counter() - start, "peak_mb": peak_rss_mb()})
    model.eval()
    if not sys.stdin.readline():  # our turn
        sys.exit("the parent process has gone")
    with torch.no_grad():
        reply({"forward_time": forward_time(lambda: loss_of(first))})


def forward_time(run) -> float:
    """Median seconds of ``run()`` (one forward pass with the loss) over FORWARD_REPEATS calls after a first,
    compiling one."""
    run()
    times = []
    for _ in range(FORWARD_REPEATS):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(mode, args):
    """Start both sides of one mode, alternate --rounds rounds between them; their messages by side, or
    None when a side failed (the other modes still run)."""
    sides, ready = {}, {}
    try:
        for side in ("mindformers", "transformers"):  # loads and warms up one side at a time
            cmd = [sys.executable, __file__, "--side", side, "--mode", mode] + sys.argv[1:]
            env = side_env(args.threads, side, OPENBLAS_NUM_THREADS=str(args.threads))
            sides[side] = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            ready[side] = read_reply(sides[side], side)
        # Rounds alternate between the sides, so drift in machine speed hits both alike.
        times = {side: [] for side in sides}
        for _ in range(args.rounds):
            for side, proc in sides.items():
                proc.stdin.write("go\n")
                proc.stdin.flush()
                answer = read_reply(proc, side)
                times[side].append(answer["time"])
                ready[side]["peak_mb"] = answer["peak_mb"]
        for side, proc in sides.items():  # each side's forward pass alone, after its training
            proc.stdin.write("forward\n")
            proc.stdin.flush()
            ready[side]["forward_time"] = read_reply(proc, side)["forward_time"]
    except SideFailed as error:
        print(f"{mode}: {error}", file=sys.stderr)
        for proc in sides.values():
            proc.kill()
            proc.wait()
        return None
    for proc in sides.values():
        proc.stdin.close()
    for proc in sides.values():
        proc.wait()
    return {side: dict(ready[side], step_time=statistics.median(times[side]) / args.steps) for side in sides}


def flop_shape(config) -> dict:
    """What the FLOP count of a step needs from a Llama config."""
    return {k: getattr(config, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                             "num_attention_heads", "num_key_value_heads", "vocab_size")}


def step_flops(shape: dict, mode: str, batch: int, seq: int) -> float:
    """Matmul FLOPs of one training step (PaLM's count, appendix B): the forward pass is 2 per weight per token
    plus the attention scores and values (2 * 2 * seq * hidden per token per layer, causal mask not
    discounted); the backward pass twice that for full fine-tuning, once (input gradients only) for LoRA,
    whose own products are negligible here (<0.5%)."""
    h, i, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    kv = h * shape["num_key_value_heads"] // shape["num_attention_heads"]
    weights = layers * (2 * h * h + 2 * h * kv + 3 * h * i) + shape["vocab_size"] * h  # + the output head
    forward = 2 * weights + layers * 4 * seq * h
    return batch * seq * forward * (3 if mode == "full" else 2)


def matmul_peak(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """fp32 matmul FLOP/s of this machine: the best of PyTorch (its BLAS) and numpy on ``size``^3."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    x, y = a.numpy(), b.numpy()
    for _ in range(repeats):
        start = time.perf_counter()
        x @ y
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4, help="rows per step")
    parser.add_argument("--seq", type=int, default=128, help="tokens per row")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (ours compiles in the first)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=["lora,full"], help="lora, full or both (lora,full)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--side", choices=["mindformers", "transformers"], help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if min(args.batch, args.seq, args.steps, args.warmup, args.rounds, args.threads) < 1:
        parser.error("--batch, --seq, --steps, --warmup, --rounds and --threads must be >= 1 (the first, "
                     "compiling step is never timed)")
    modes = [m for item in args.modes for m in item.split(",") if m]
    if not modes or set(modes) - set(MODES):
        parser.error(f"--modes takes {' and/or '.join(MODES)}, found {args.modes}")
    if args.side:
        return (run_mindformers if args.side == "mindformers" else run_transformers)(args)

    results = {mode: measure(mode, args) for mode in modes}
    peak = matmul_peak(args.threads)

    tokens = args.batch * args.seq
    print(f"SmolLM2-135M-Instruct float32, {args.threads} threads, batch {args.batch} x {args.seq} tokens, "
          f"AdamW lr {LEARNING_RATE:g}, clip {MAX_GRAD_NORM:g}; median of {args.rounds} alternating rounds of "
          f"{args.steps} steps after {args.warmup} warm-up steps")
    for mode in [m for m, sides in results.items() if sides is None]:
        print(f"{mode:>4} failed: a side ended before finishing (its error is above)")
    results = {mode: sides for mode, sides in results.items() if sides is not None}
    for mode, sides in results.items():
        ours, theirs = sides["mindformers"], sides["transformers"]
        diff = abs(ours["first_loss"] - theirs["first_loss"])
        print(f"{mode:>4} first-step loss: mindformers {ours['first_loss']:.6f}, transformers "
              f"{theirs['first_loss']:.6f}; |diff| {diff:.1e} {'ok' if diff <= 1e-4 else 'MISMATCH'}; "
              f"trainable parameters {ours['trainable']:,} vs {theirs['trainable']:,}")
    if not results:
        raise SystemExit(1)
    print(f"{'mode':>4} {'metric':>16} {'mindformers':>12} {'transformers':>13} {'ratio':>6}")
    for mode, sides in results.items():
        ours, theirs = sides["mindformers"], sides["transformers"]
        for name, key in (("train tokens/s", "step_time"), ("forward tokens/s", "forward_time")):
            a, b = tokens / ours[key], tokens / theirs[key]
            print(f"{mode:>4} {name:>16} {a:>10.1f}/s {b:>11.1f}/s {a / b:>6.2f}")
    print("where a step's time goes (seconds): step = forward only + the rest (backward, clipping, update)")
    for mode, sides in results.items():
        parts = [f"{side} {s['step_time']:.3f} = {s['forward_time']:.3f} + {s['step_time'] - s['forward_time']:.3f}"
                 for side, s in sides.items()]
        print(f"{mode:>4} " + "; ".join(parts))
    print(f"model FLOP rate of a step as a fraction of the fp32 matmul peak measured now ({peak / 1e9:.1f} GFLOP/s, "
          f"{args.threads} threads, 2048^3, best of PyTorch and numpy); peak RSS during the timed steps (MB)")
    for mode, sides in results.items():
        flops = step_flops(sides["mindformers"]["flop_shape"], mode, args.batch, args.seq)
        rates = {side: flops / s["step_time"] for side, s in sides.items()}
        mem = {side: s["peak_mb"] for side, s in sides.items()}
        print(f"{mode:>4} {flops / 1e9:.0f} GFLOP/step: mindformers {rates['mindformers'] / peak:.2f}, transformers "
              f"{rates['transformers'] / peak:.2f} of peak; peak RSS mindformers {mem['mindformers']:,.0f} MB, "
              f"transformers {mem['transformers']:,.0f} MB, ratio {mem['mindformers'] / mem['transformers']:.2f}")
    found = []
    for mode, sides in results.items():
        ours, theirs = sides["mindformers"], sides["transformers"]
        found.append(target(f"{mode} step speed / transformers", theirs["step_time"] / ours["step_time"], 1.3))
        found.append(target(f"{mode} peak RSS / transformers", ours["peak_mb"] / theirs["peak_mb"], 1.0, at_most=True))
    print_targets(found)
    if len(results) < len(modes):
        raise SystemExit(1)

if __name__ == "__main__":
    main()
