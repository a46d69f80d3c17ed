"""A parallel plan anyone can read: how a split puts each parameter on the devices, and what it costs.

    python -m mindformers.parallel.plan --config llama2_7b --device_num 16 --data_parallel 2 \\
        --model_parallel 4 --pipeline_stage 2 --micro_batch_num 4 --optimizer_shard --batch_size 16

Strategies are data: each family's config carries ``tp_plan`` ({module path pattern: style}, ``*`` standing
for a layer index, names as in the Hugging Face checkpoint); :func:`module_style` looks a module up and
:data:`STYLES` says what a style does to its weights and to the op that uses them (MindFormers' Llama
strategies: column-parallel q/k/v and gate/up ``((dp, 1), (mp, 1))``, row-parallel o/down
``((dp, mp), (1, mp))`` followed by an all-reduce, the embedding and head split by vocabulary unless
``vocab_emb_dp``; experts split by ``expert_parallel`` and their widths by ``model_parallel``). Anything a plan
does not name is replicated. Pipeline stages take consecutive layers (MindFormers' rule: layer i goes to
stage ``min(i // max((layers + 1) // pp, 1), pp - 1)``), the embedding the first stage, the final norm and
head the last.

The model is built without allocating its weights (``mindspore.nn.utils.no_init_parameters``), so a 671B
configuration plans in a second. Memory per device follows from the local shapes; activations use the
estimate of Korthikanti et al. 2022 for a transformer layer (dense layers; MoE and MLA layers are counted as
dense layers of the same width, a lower bound).
"""
import argparse
import json
import math
import re
import sys
from dataclasses import asdict
from typing import Any, Dict, Optional, Tuple

from .config import ParallelConfig, RecomputeConfig

STYLES = {
    "colwise": "output features split by model_parallel; MatMul ((dp, 1), (mp, 1))",
    "rowwise": "input features split by model_parallel; MatMul ((dp, mp), (1, mp)), then an all-reduce",
    "vocab": "embedding rows split by model_parallel unless vocab_emb_dp; Gather ((mp, 1), (dp, 1)) / ((1, 1), (dp, 1))",
    "head": "output projection rows split by model_parallel unless vocab_emb_dp; MatMul ((dp, 1), (mp, 1)) / ((dp, 1), (1, 1))",
    "experts": "experts split by expert_parallel, their widths by model_parallel; BatchMatMul ((ep, dp/ep, 1), (ep, mp, 1))",
    "replicate": "whole on every device",
}
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def _pattern(key: str) -> "re.Pattern":
    return re.compile("^" + re.escape(key).replace(r"\*", r"\d+") + "$")


_LORA_FACTOR = re.compile(r"^(.*)\.lora_([AB])\.[^.]+$")


def module_style(config, module: str) -> str:
    """The style the family's ``tp_plan`` gives module path ``module`` ("replicate" when none).

    A LoRA layer takes its base layer's split: under a column-parallel base, ``lora_B`` (``[out, r]``) is
    split like the base (colwise) and ``lora_A`` whole; under a row-parallel base, ``lora_A`` (``[r, in]``)
    is split like the base (rowwise, with the all-reduce after it) and ``lora_B`` whole."""
    factor = _LORA_FACTOR.match(module)
    if factor:
        base = module_style(config, factor.group(1))
        return base if (base, factor.group(2)) in (("colwise", "B"), ("rowwise", "A")) else "replicate"
    for key, style in getattr(config, "tp_plan", {}).items():
        if _pattern(key).match(module):
            return style
    return "replicate"


def module_kind(cell) -> str:
    """The weight layout of ``cell`` for :func:`local_shape`: Conv1D ([in, out]) for GPT-2's layers and LoRA
    layers on them, else the class name."""
    if getattr(cell, "fan_in_fan_out", False):
        return "Conv1D"
    return type(cell).__name__


def local_shape(shape: Tuple[int, ...], style: str, kind: str, leaf: str, parallel: ParallelConfig) -> Tuple[int, ...]:
    """The slice of a parameter of global ``shape`` one device holds.

    Args:
        style: the module's plan style; kind: the module's class name (Linear, Conv1D, Embedding, Experts);
        leaf: the parameter's own name (weight, bias, gate_up_proj, ...).
    """
    mp, ep = parallel.model_parallel, parallel.expert_parallel
    out = list(shape)

    def split(dim, by):
        out[dim] = shape[dim] // by

    if style == "colwise":  # [out, in] (Conv1D: [in, out]); bias [out]
        split(1 if kind == "Conv1D" and leaf == "weight" else 0, mp)
    elif style == "rowwise" and leaf == "weight":
        split(0 if kind == "Conv1D" else 1, mp)
    elif style in ("vocab", "head") and not parallel.vocab_emb_dp and leaf == "weight":
        split(0, mp)
    elif style == "experts" and len(shape) == 3:  # gate_up [E, 2I, H], down [E, H, I]
        split(0, ep)
        split(1 if leaf == "gate_up_proj" else 2, mp)
    return tuple(out)


def stage_of(name: str, layers: int, pipeline_stage: int) -> int:
    """The pipeline stage of parameter ``name`` (MindFormers' layer-to-stage rule, see the module doc)."""
    match = re.search(r"\.(?:layers|h|blocks)\.(\d+)\.", f".{name}")
    if match:
        per_stage = max((layers + 1) // pipeline_stage, 1)
        return min(int(match.group(1)) // per_stage, pipeline_stage - 1)
    if re.search(r"(embed_tokens|wte|wpe|word_embedding|position_embedding)\.", name):
        return 0
    return pipeline_stage - 1


def build_skeleton(config):
    """The model ``config`` describes (with its ``pet_config`` tuner), with every Parameter's shape but no memory
    behind it."""
    from mindspore.nn.utils import no_init_parameters

    from ..auto import model_class_for
    from ..modeling_utils import _weights_filled_by_caller
    from ..utils import shapes_only

    with _weights_filled_by_caller(), no_init_parameters(), shapes_only():
        model = model_class_for(config, None)(config)
        model.apply_pet_config()  # the tuner the config asks for (its factors take their base layers' split)
    return model


def make_plan(config, parallel: ParallelConfig, device_num: Optional[int] = None, seq_length: Optional[int] = None,
              batch_size: Optional[int] = None, recompute: Optional[RecomputeConfig] = None) -> Dict[str, Any]:
    """The plan of ``config`` under ``parallel`` (see the module doc), as the JSON the CLI writes.

    Returns:
        ``{"device_num", "parallel_config", "parameters": {name: {"shape", "local_shape", "stage", "style"}},
        "memory_gb": {"stage <s>": {"weights", "gradients", "optimizer_states", "activations",
        "activations_recompute", "total"}}, "strategies": {module pattern: style description}}``.
    """
    seq_length = seq_length or config.max_position_embeddings
    batch_size = batch_size or parallel.data_parallel * parallel.micro_batch_num
    parallel.check(config, device_num, batch_size, seq_length)
    recompute = recompute or RecomputeConfig()
    model = build_skeleton(config)
    kinds = {path: module_kind(cell) for path, cell in model.cells_and_names()}
    layers, pp = config.num_hidden_layers, parallel.pipeline_stage
    parameters = {}
    for name, param in model.parameters_and_names():
        module, _, leaf = name.rpartition(".")
        style = module_style(config, module)
        shape = tuple(int(d) for d in param.shape)
        parameters[name] = {"shape": list(shape), "stage": stage_of(name, layers, pp), "style": style,
                            "local_shape": list(local_shape(shape, style, kinds.get(module, ""), leaf, parallel)),
                            "trainable": bool(param.requires_grad)}
    return {
        "model_type": config.model_type,
        "device_num": parallel.device_num,
        "parallel_config": asdict(parallel),
        "seq_length": seq_length,
        "batch_size": batch_size,
        "parameters": parameters,
        "memory_gb": _memory(config, parallel, recompute, parameters, seq_length, batch_size),
        "strategies": {key: STYLES[style] for key, style in getattr(config, "tp_plan", {}).items()
                       if any(_pattern(key).match(module) for module in kinds)},
    }


def _memory(config, parallel, recompute, parameters, seq_length, batch_size) -> Dict[str, Dict[str, float]]:
    """Per-device memory of each stage, in GB (weights in the model dtype; gradients likewise; AdamW's two
    float32 moments, divided by data_parallel with optimizer_shard)."""
    dtype_bytes = _DTYPE_BYTES.get(config.dtype, 4)
    pp, dp, mp = parallel.pipeline_stage, parallel.data_parallel, parallel.model_parallel
    micro_batch = batch_size // (dp * parallel.micro_batch_num)
    h, a, s = config.hidden_size, config.num_attention_heads, seq_length
    # Korthikanti et al. 2022, bytes per layer for 16-bit activations, scaled to the model dtype
    if parallel.use_seq_parallel:
        per_layer = s * micro_batch * h * (34 / mp + 5 * a * s / (h * mp))
    else:
        per_layer = s * micro_batch * h * (10 + 24 / mp + 5 * a * s / (h * mp))
    per_layer *= dtype_bytes / 2
    kept = 2 * s * micro_batch * h * dtype_bytes / 2 / (mp if parallel.use_seq_parallel else 1)  # a layer's input
    out = {}
    for stage in range(pp):
        numel = sum(math.prod(p["local_shape"]) for p in parameters.values() if p["stage"] == stage)
        trainable = sum(math.prod(p["local_shape"]) for p in parameters.values() if p["stage"] == stage and p["trainable"])
        optimizer = trainable * 8 / (dp if parallel.optimizer_shard else 1)
        stage_layers = len({int(m.group(1)) for m in (re.search(r"\.(?:layers|h|blocks)\.(\d+)\.", f".{n}")
                                                      for n, p in parameters.items() if p["stage"] == stage) if m})
        in_flight = min(pp - stage, parallel.micro_batch_num)  # 1F1B: the first stage holds pp micro-batches
        recomputed = min(recompute.layers_recomputed(config.num_hidden_layers, pp) // pp
                         if isinstance(recompute.recompute, bool) else recompute.layers_recomputed(stage_layers, 1),
                         stage_layers)
        activations = stage_layers * per_layer * in_flight
        with_recompute = ((stage_layers - recomputed) * per_layer + recomputed * kept) * in_flight
        gb = 1024 ** 3
        values = {"weights": numel * dtype_bytes / gb, "gradients": trainable * dtype_bytes / gb,
                  "optimizer_states": optimizer / gb, "activations": activations / gb,
                  "activations_recompute": (stage_layers * kept * in_flight) / gb}
        values["total"] = values["weights"] + values["gradients"] + values["optimizer_states"] + with_recompute / gb
        out[f"stage {stage}"] = {k: round(v, 3) for k, v in values.items()}
    return out


def dryrun_mismatches(plan: Dict[str, Any]) -> Dict[str, Tuple[list, list]]:
    """``{name: (plan's local shape, MindSpore's)}`` where the dry run's per-device shape differs from the plan,
    for the parameters the compiled rank holds."""
    dryrun = plan["dryrun"]
    return {name: (plan["parameters"][name]["local_shape"], shape) for name, shape in dryrun["parameters"].items()
            if plan["parameters"][name]["local_shape"] != shape}


def format_plan(plan: Dict[str, Any], limit: int = 0) -> str:
    """The plan as text: the split, each module style, each parameter's shapes (``limit`` > 0 shows that many
    per stage), and memory per device."""
    pc = plan["parallel_config"]
    lines = [f"{plan['model_type']} on {plan['device_num']} devices: data_parallel {pc['data_parallel']} x "
             f"model_parallel {pc['model_parallel']} x pipeline_stage {pc['pipeline_stage']} (micro-batches "
             f"{pc['micro_batch_num']}, expert_parallel {pc['expert_parallel']}, vocab_emb_dp {pc['vocab_emb_dp']}, "
             f"optimizer_shard {pc['optimizer_shard']}); batch {plan['batch_size']} x {plan['seq_length']} tokens",
             "", "strategies:"]
    lines += [f"  {key:48s} {desc}" for key, desc in plan["strategies"].items()]
    dryrun = plan.get("dryrun")
    header = f"{'parameter':64s} {'global shape':>22s} {'per device':>22s} stage"
    if dryrun:
        header += f" {'MindSpore, rank ' + str(dryrun['rank']):>22s}"
    lines += ["  (everything else is replicated)", "", header]
    shown: Dict[int, int] = {}
    for name, p in plan["parameters"].items():
        shown[p["stage"]] = shown.get(p["stage"], 0) + 1
        if limit and shown[p["stage"]] > limit:
            continue
        line = f"{name:64s} {str(tuple(p['shape'])):>22s} {str(tuple(p['local_shape'])):>22s} {p['stage']:5d}"
        if dryrun:
            compiled = dryrun["parameters"].get(name)
            mark = "-" if compiled is None else str(tuple(compiled)) + ("" if compiled == p["local_shape"] else " !")
            line += f" {mark:>22s}"
        lines.append(line)
    lines += ["", "memory per device (GB): weights, gradients, optimizer states, activations (with recompute), total"]
    for stage, m in plan["memory_gb"].items():
        lines.append(f"  {stage}: {m['weights']:.2f} + {m['gradients']:.2f} + {m['optimizer_states']:.2f} + "
                     f"{m['activations']:.2f} ({m['activations_recompute']:.2f}) = {m['total']:.2f}")
    if dryrun:
        differ = dryrun_mismatches(plan)
        stage = {plan["parameters"][n]["stage"] for n in dryrun["parameters"]}
        lines += ["", f"dry run: MindSpore compiled the training step of rank {dryrun['rank']} (stage "
                      f"{', '.join(map(str, sorted(stage)))}) in {dryrun['seconds']:.1f} s; it holds "
                      f"{len(dryrun['parameters'])} parameters, "
                      + ("all shaped as planned" if not differ else f"{len(differ)} shaped otherwise (marked !)")]
        if dryrun.get("stored"):
            lines.append(f"  optimizer_shard: {len(dryrun['stored'])} of them stored split further over data_parallel "
                         "between steps")
    return "\n".join(lines)


def _run_yaml_defaults(source: str) -> Tuple[ParallelConfig, RecomputeConfig, Optional[int], Optional[int]]:
    """The split a run YAML asks for: its ``parallel_config`` and ``recompute_config`` sections, and its
    ``training`` section's seq_length and (per data-parallel copy) batch_size; defaults for anything else."""
    if not source.endswith((".yaml", ".yml")):
        return ParallelConfig(), RecomputeConfig(), None, None
    from ..presets import load_yaml

    run = load_yaml(source)
    training = run.get("training") or run.get("runner_config") or {}
    return (ParallelConfig.from_dict(run.get("parallel_config"), f"{source}: parallel_config"),
            RecomputeConfig.from_dict(run.get("recompute_config"), f"{source}: recompute_config"),
            training.get("seq_length"), training.get("batch_size"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mindformers.parallel.plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True,
                        help="a preset name, a Hugging Face directory, or a YAML file (a run YAML's parallel_config, "
                             "recompute_config and training.seq_length / batch_size are the defaults of the options)")
    parser.add_argument("--device_num", type=int, help="devices (default: dp x mp x pp)")
    for name in ("data_parallel", "model_parallel", "pipeline_stage", "micro_batch_num", "expert_parallel"):
        parser.add_argument(f"--{name}", type=int, help="default: the YAML's parallel_config, else 1")
    parser.add_argument("--optimizer_shard", action=argparse.BooleanOptionalAction,
                        help="split optimizer states over data_parallel")
    parser.add_argument("--vocab_emb_dp", action=argparse.BooleanOptionalAction,
                        help="keep the embedding and head whole (default; --no-vocab_emb_dp: split the vocabulary)")
    parser.add_argument("--use_seq_parallel", action=argparse.BooleanOptionalAction)
    parser.add_argument("--recompute", action=argparse.BooleanOptionalAction,
                        help="recompute every layer (memory estimate)")
    parser.add_argument("--seq_length", type=int, help="tokens per row (default: the model's max_position_embeddings)")
    parser.add_argument("--batch_size", type=int, help="global batch (default: data_parallel x micro_batch_num)")
    parser.add_argument("--json", help="also write the plan as JSON to this file")
    parser.add_argument("--all", action="store_true", help="list every parameter (default: 12 per stage)")
    parser.add_argument("--dryrun", action="store_true",
                        help="also compile the training step for --rank under MindSpore's dry run (simulated Ascend "
                             "devices; builds stub CANN libraries once, needs gcc) and show its per-device shapes")
    parser.add_argument("--rank", type=int, default=0, help="the rank the dry run compiles for (default 0)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds the dry-run compile may take")
    parser.add_argument("--strategy_file", help="with --dryrun: also write MindSpore's strategy checkpoint (every "
                                                "rank's layouts; what python -m mindformers.parallel.checkpoint reads)")
    args = parser.parse_args(argv)
    from ..auto import AutoConfig

    try:
        config = AutoConfig.from_pretrained(args.config)
        parallel, recompute, seq_length, batch_size = _run_yaml_defaults(args.config)
        given = {name: getattr(args, name) for name in ("data_parallel", "model_parallel", "pipeline_stage",
                                                        "micro_batch_num", "expert_parallel", "vocab_emb_dp",
                                                        "use_seq_parallel", "optimizer_shard")}
        parallel = ParallelConfig(**{**asdict(parallel), **{k: v for k, v in given.items() if v is not None}})
        if args.recompute is not None:
            recompute = RecomputeConfig(**{**asdict(recompute), "recompute": args.recompute})
        seq_length = args.seq_length or seq_length
        batch_size = args.batch_size or (batch_size * parallel.data_parallel * parallel.micro_batch_num
                                         if batch_size else None)
        plan = make_plan(config, parallel, args.device_num, seq_length, batch_size, recompute)
        if args.dryrun:
            from .dryrun import compile_step

            print(f"compiling the training step of rank {args.rank} of {parallel.device_num} (MindSpore dry run) ...",
                  file=sys.stderr, flush=True)
            result = compile_step(config, parallel, args.rank, plan["seq_length"], plan["batch_size"], args.timeout,
                                  args.strategy_file)
            plan["dryrun"] = {"rank": args.rank, "compiled": result["compiled"], "seconds": result["seconds"],
                              "parameters": result["parameters"], "stored": result["stored"]}
    except (ValueError, KeyError, FileNotFoundError, TypeError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_plan(plan, 0 if args.all else 12))
    if args.json:
        from ..utils import atomic_write_text

        atomic_write_text(args.json, json.dumps(plan, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
