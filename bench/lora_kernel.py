"""Speed of the multi-LoRA kernels (mindformers/serving/lora_kernels.py) on the serving benchmark's shapes.

Usage:
    python bench/lora_kernel.py [--baseline REV] [--kernels host gather] [--repeats 10] [--calls 30]

Cases (SmolLM2-135M's linear layers): 32 rows x 1 token (a decode step) with in 576 -> out 1536 and
1536 -> 576, adapters of rank 8 and 64: one adapter for all rows, 8 adapters (4 rows each, adjacent or
interleaved: row r has adapter r % 8, as bench/serve.py binds them), 32 adapters (one row each), all rows
base (slot -1); and a prefill of 1 row x 512 tokens at rank 64. The pool holds 32 slots of max_rank = the
case's rank (as AdapterPool sizes it).

Each case runs inside ONE compiled graph that calls the kernel --calls times in a chain
(``x = x + delta(x)[..., :1]``, so no call can be folded or dropped): a graph launch costs ~100 us,
which would swamp a single call. Figures are the median over --repeats graph calls, divided by --calls:
``us`` includes the chain's slice and add (MindSpore's CPU ops cost ~20 us each here), whose cost is the
``chain only`` row (the same graph with ``delta(x) = x``); ``net`` is ``us`` minus that, the kernel and its
launch. GFLOP/s = 2 * multiply-adds / net, multiply-adds = adapter tokens * rank * (in + out).

--baseline REV also builds host_kernels.cc as it is at git revision REV (e.g. the branch's first commit)
and times it in the same process, case by case beside the current source: the before/after table.
On a shared 2-core machine the figures move by ~10% from run to run (more for the memory-bound cases).
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import mindspore as ms  # noqa: E402
from mindspore import Tensor, ops  # noqa: E402

from mindformers.kernels import host  # noqa: E402
from mindformers.serving import lora_kernels  # noqa: E402

ROWS, SLOTS = 32, 32
MIXES = {"1 adapter": lambda: np.zeros(ROWS, np.int32),
         "8 adapters": lambda: np.repeat(np.arange(8, dtype=np.int32), ROWS // 8),
         "8 interleaved": lambda: np.arange(ROWS, dtype=np.int32) % 8,  # the engine's rows are in request order
         "32 adapters": lambda: np.arange(ROWS, dtype=np.int32),
         "base": lambda: np.full(ROWS, -1, np.int32)}


def cases():
    """(name, rows, tokens per row, in, out, rank, row_slots) of every case."""
    for fan_in, fan_out in ((576, 1536), (1536, 576)):
        for rank in (8, 64):
            for mix, slots in MIXES.items():
                yield f"{fan_in}->{fan_out} r{rank} {mix}", ROWS, 1, fan_in, fan_out, rank, slots()
    yield "prefill 1x512 576->1536 r64", 1, 512, 576, 1536, 64, np.zeros(1, np.int32)


def host_op(rev=None):
    """The lora_delta AOT op of host_kernels.cc, as in the work tree or at git revision ``rev``."""
    if rev is None:
        path = host.build()
    else:
        source = subprocess.run(["git", "show", f"{rev}:mindformers/kernels/host_kernels.cc"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout
        current = host.SOURCE
        with tempfile.TemporaryDirectory() as tmp:
            host.SOURCE = os.path.join(tmp, "host_kernels.cc")
            with open(host.SOURCE, "w") as f:
                f.write(source)
            try:
                path = host.build()
            finally:
                host.SOURCE = current
    op = ops.Custom(f"{path}:lora_delta", out_shape=host._lora_delta_shape, out_dtype=host._float32,
                    func_type="aot")

    def delta(x, a, bt, ranks, row_slots):
        return op(x, a, bt, ranks, row_slots)
    return delta


def identity(x, a, bt, ranks, row_slots):
    return x


def chain(delta, calls):
    """A compiled graph calling ``delta`` ``calls`` times, each on the previous call's result."""
    def run(x, a, bt, ranks, row_slots):
        for _ in range(calls):
            x = x + delta(x, a, bt, ranks, row_slots)[..., :1]
        return x
    return ms.jit(run)


def time_graph(graph, args, repeats):
    """Median seconds of one graph call (after two warm-up calls, the first compiles)."""
    for _ in range(2):
        graph(*args).asnumpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        graph(*args).asnumpy()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", metavar="REV", help="also time host_kernels.cc at this git revision")
    parser.add_argument("--kernels", nargs="+", default=["host", "gather"], choices=["host", "gather"])
    parser.add_argument("--repeats", type=int, default=10, help="graph calls per case (the median is kept)")
    parser.add_argument("--calls", type=int, default=30, help="kernel calls chained in one graph")
    parser.add_argument("--only", default="", help="run only the cases whose name contains this text")
    args = parser.parse_args()
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")

    variants = {}  # column name -> delta function
    if args.baseline:
        variants[f"host@{args.baseline}"] = host_op(args.baseline)
    if "host" in args.kernels:
        variants["host"] = host_op()
    if "gather" in args.kernels:
        variants["gather"] = lora_kernels.gather_delta
    graphs = {name: chain(fn, args.calls) for name, fn in variants.items()}
    identity_graph = chain(identity, args.calls)

    rng = np.random.default_rng(0)
    head = f"{'case':<30}" + "".join(f"{name + ' us':>16}{'net':>7}{'GFLOP/s':>8}" for name in variants)
    print(f"# {args.calls} chained calls per graph, median of {args.repeats}; us per kernel call")
    print(head)
    chain_us = {}
    for name, rows, seq, fan_in, fan_out, rank, row_slots in cases():
        if args.only not in name:
            continue
        x = Tensor(rng.normal(size=(rows, seq, fan_in)).astype(np.float32))
        a = Tensor(rng.normal(size=(SLOTS, rank, fan_in)).astype(np.float32) * 0.05)
        bt = Tensor(rng.normal(size=(SLOTS, rank, fan_out)).astype(np.float32) * 1e-4)  # x stays ~N(0, 1)
        ranks = Tensor(np.full(SLOTS, rank, np.int32))
        inputs = (x, a, bt, ranks, Tensor(row_slots))
        shape = (rows, seq, fan_in)
        if shape not in chain_us:
            chain_us[shape] = time_graph(identity_graph, inputs, args.repeats) / args.calls * 1e6
            print(f"{f'chain only {rows}x{seq}x{fan_in}':<30}{chain_us[shape]:>16.1f}")
        macs = int((row_slots >= 0).sum()) * seq * rank * (fan_in + fan_out)
        line = f"{name:<30}"
        for graph in graphs.values():
            us = time_graph(graph, inputs, args.repeats) / args.calls * 1e6
            net = us - chain_us[shape]
            flops = f"{2 * macs / net / 1e3:.1f}" if macs and net > 0 else "-"
            line += f"{us:>16.1f}{net:>7.1f}{flops:>8}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
