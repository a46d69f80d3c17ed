"""Memory and step time of training with and without per-layer recompute (``TrainingArguments.recompute``).

Usage:
    python bench/recompute_memory.py [--modes jit pynative] [--layers 4] [--hidden 64] [--intermediate 8192]
                                     [--heads 1] [--vocab 1000] [--batch 8] [--seq 128] [--steps 3] [--parallel]

For each mode (``TrainingArguments.mode``) the same randomly initialised Llama
(``LlamaForCausalLM.from_config(cfg, seed=0)``) trains through the public ``Trainer`` API for ``--steps``
SGD steps on the same packed random-word text, once without and once with recompute, each in a fresh
process. Per run:

- step MB: the highest resident set size (VmHWM) reached during training minus the RSS when
  training begins (model, optimizer and data already loaded). Besides the activations kept for the backward
  pass it holds a part that recompute does not change (kernels, the compiled update, gradients: a few
  hundred MB), so the on/off ratio understates the saving on activations themselves.
- step s: median wall time of the steps after the first (the first one compiles).
- losses: every step's loss; recompute must not change them.

``--parallel`` runs the two processes of a mode at once: memory figures stay valid, step times do not.

What was measured (MindSpore 2.10, 2 CPU cores shared with other jobs, so times are only indicative):

    defaults (4 layers, hidden 64, intermediate 8192, 1 head, batch 8 x 128 tokens): activations are mostly
    feed-forward tensors
        jit       off 1345 MB   on  928 MB   x0.69   step 2.9 s -> 4.4 s   losses identical
        pynative  off 1099 MB   on  713 MB   x0.65   step 4.8 s -> 5.6 s   losses identical
    --hidden 128 --intermediate 512 --heads 2 --batch 8 --seq 512: attention-heavy ([8, 2, 512, 512] scores)
        jit       off 2496 MB   on 2777 MB   x1.11   step 3.7 s -> 5.4 s   losses identical
        pynative  off 1112 MB   on  758 MB   x0.68   step 6.7 s -> 9.2 s   losses identical

Recompute does take effect in compiled steps (``ms.jit`` of ``ms.value_and_grad`` of a function calling the
model): the backward graph recomputes each layer and the saved activations go. But on CPU, every kernel
instance of a broadcasting binary op (the attention bias add, RMSNorm's scaling, the rotary products),
``where``/Select, Transpose and GeLU in a compiled graph keeps ~2-6x its float32 output size for the
graph's lifetime (16 chained broadcast adds on [4096, 256] hold 264 MB; 16 sin, matmul, softmax or silu
ops 7-14 MB), and recompute adds a second copy of those kernels. Where they dominate (long sequences, many
heads, small hidden size) recompute in ``jit`` mode costs memory. In PyNative, where layers of the same
shape share kernels, recompute saved memory in every configuration tried.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:  # loaded by path from the tests
    sys.path.insert(0, HERE)
from sides import peak_rss_mb, rss_mb  # noqa: E402

MARK = "RESULT "
SIZES = dict(layers=4, hidden=64, intermediate=8192, heads=1, vocab=1000, batch=8, seq=128, steps=3)


def word_tokenizer(vocab_size: int):
    """A whitespace tokenizer whose word "t<i>" is token i (as in tests/pipeline/conftest.py); t1 is EOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from mindformers import PreTrainedTokenizer

    backend = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizer(backend, pad_token="t0", eos_token="t1")


def run_one(mode: str, recompute: bool, layers: int, hidden: int, intermediate: int, heads: int, vocab: int,
            batch: int, seq: int, steps: int, output_dir: str) -> dict:
    """Train ``steps`` steps in this process.

    Returns:
        ``mode``, ``recompute``, ``step_mb`` (peak RSS during training over the RSS when it began),
        ``first_step_s``, ``step_s`` (median of the later steps) and ``losses``.
    """
    import mindspore as ms
    import numpy as np

    from mindformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments
    from mindformers.trainer.callbacks import TrainerCallback

    class Probe(TrainerCallback):
        """The RSS when training begins and the wall time of every step."""

        def on_train_begin(self, state, args):
            self.begin_rss, self.begin_peak = rss_mb(), peak_rss_mb()
            self.times, self.last = [], time.perf_counter()

        def on_step_end(self, state, logs):
            now = time.perf_counter()
            self.times.append(now - self.last)
            self.last = now

    if mode == "pynative":
        ms.runtime.launch_blocking()  # eager ops on CPU are much faster with blocking launches
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=seq,
                         pad_token_id=0, bos_token_id=None, eos_token_id=1)
    model = LlamaForCausalLM.from_config(config, seed=0)
    # Plain text is packed into rows of `seq` tokens: each record is seq - 1 words plus EOS, one full row.
    words = np.random.default_rng(0).integers(2, vocab, size=(batch * steps, seq - 1))
    records = [{"text": " ".join(f"t{i}" for i in row)} for row in words]
    # SGD without clipping: the compiled update is small, so activations dominate the step's memory.
    args = TrainingArguments(output_dir=output_dir, mode=mode, recompute=recompute, max_steps=steps,
                             batch_size=batch, seq_length=seq, optim="sgd", learning_rate=0.1, max_grad_norm=None,
                             logging_steps=1, report_to=[], disable_tqdm=True, save_steps=0)
    probe = Probe()
    trainer = Trainer(task="text_generation", model=model, tokenizer=word_tokenizer(vocab), args=args,
                      train_dataset=records, callbacks=[probe])
    state = trainer.train()
    peak = peak_rss_mb()
    if peak <= probe.begin_peak:
        raise RuntimeError(f"training never exceeded the RSS peak reached before it ({probe.begin_peak:.0f} MB): "
                           "make the activations larger (--batch, --seq, --intermediate)")
    return {"mode": mode, "recompute": recompute, "step_mb": peak - probe.begin_rss,
            "first_step_s": probe.times[0],
            "step_s": statistics.median(probe.times[1:]) if len(probe.times) > 1 else float("nan"),
            "losses": [entry["loss"] for entry in state.log_history if "loss" in entry]}


def measure(runs, parallel: bool = False, timeout: float = 1800) -> list:
    """``run_one(**run)`` for each dict in ``runs``, each in a fresh Python process (its own RSS peak).

    Args:
        runs: dicts of ``run_one``'s arguments without ``output_dir``.
        parallel: start all processes at once (memory figures stay valid, times do not).
    Returns:
        The results, in the order of ``runs``.
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    with tempfile.TemporaryDirectory(prefix="recompute-bench-") as out:
        def start(index, run):
            request = json.dumps({**run, "output_dir": os.path.join(out, str(index))})
            return subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", request], cwd=out,
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def finish(process, run):
            stdout, stderr = process.communicate(timeout=timeout)
            lines = [line for line in stdout.splitlines() if line.startswith(MARK)]
            if process.returncode != 0 or not lines:
                raise RuntimeError(f"the worker {run} failed with code {process.returncode}:\n{stderr[-3000:]}")
            return json.loads(lines[-1][len(MARK):])

        if parallel:
            processes = [start(i, run) for i, run in enumerate(runs)]
            return [finish(p, run) for p, run in zip(processes, runs)]
        return [finish(start(i, run), run) for i, run in enumerate(runs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", nargs="+", default=["jit", "pynative"], choices=["jit", "pynative"])
    for name, default in SIZES.items():
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--parallel", action="store_true", help="run off and on at once (times not comparable)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    cli = parser.parse_args()
    if cli.worker:
        print(MARK + json.dumps(run_one(**json.loads(cli.worker))), flush=True)
        return
    sizes = {name: getattr(cli, name) for name in SIZES}
    print(f"Llama: {cli.layers} layers, hidden {cli.hidden}, intermediate {cli.intermediate}, {cli.heads} attention "
          f"head(s), batch {cli.batch} x {cli.seq} tokens, {cli.steps} SGD steps")
    print(f"{'mode':<9} {'recompute':<9} {'step MB':>8} {'step s':>7} {'1st step s':>10}  losses")
    for mode in cli.modes:
        off, on = measure([{"mode": mode, "recompute": r, **sizes} for r in (False, True)], cli.parallel)
        for row in (off, on):
            losses = " ".join(f"{x:.6f}" for x in row["losses"])
            print(f"{mode:<9} {'on' if row['recompute'] else 'off':<9} {row['step_mb']:>8.0f} {row['step_s']:>7.2f} "
                  f"{row['first_step_s']:>10.1f}  {losses}")
        diff = max(abs(a - b) for a, b in zip(off["losses"], on["losses"]))
        print(f"{mode:<9} on/off    memory x{on['step_mb'] / off['step_mb']:.2f}, step time "
              f"x{on['step_s'] / off['step_s']:.2f}, largest loss difference {diff:.1e}")


if __name__ == "__main__":
    main()
