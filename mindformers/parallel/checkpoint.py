"""Checkpoints across strategies (MindFormers' ``auto_trans_ckpt``): split a Hugging Face directory into the
per-rank slices a sharded run loads, and merge a sharded run's per-rank checkpoints back into one directory.

    python -m mindformers.parallel.checkpoint split --src HF_DIR --strategy STRATEGY --out RANKS_DIR
    python -m mindformers.parallel.checkpoint merge --src RANKS_DIR --strategy STRATEGY --out HF_DIR --config SOURCE

``STRATEGY`` is the strategy checkpoint MindSpore writes when it compiles a sharded step
(``strategy_ckpt_config``; a dry run writes one per rank): one file, or a folder of per-stage files of a
pipeline run, which are merged first (``mindspore.parallel.merge_pipeline_strategys``). The per-rank layout is
MindSpore's: ``RANKS_DIR/rank_<r>/<prefix><r>.ckpt``. The slicing itself is MindSpore's
``transform_checkpoints``; parameter names are the Hugging Face checkpoint's, so a merged directory is an
ordinary ``save_pretrained`` directory (MoE experts written one tensor each, as transformers writes them).
"""
import argparse
import glob
import os
import shutil
import sys
import tempfile
from typing import Dict, Optional

import numpy as np

from ..utils import logger


def _strategy_file(strategy: str, workdir: str) -> str:
    """One strategy file: ``strategy`` itself, or the merge of the per-stage files in folder ``strategy``."""
    import mindspore as ms

    if os.path.isfile(strategy):
        return strategy
    if not os.path.isdir(strategy):
        raise FileNotFoundError(f"no strategy file or folder at {strategy}")
    files = sorted(glob.glob(os.path.join(strategy, "*.ckpt")))
    if not files:
        raise FileNotFoundError(f"{strategy} holds no strategy files (*.ckpt)")
    if len(files) == 1:
        return files[0]
    merged = os.path.join(workdir, "merged_strategy.ckpt")
    ms.parallel.merge_pipeline_strategys(strategy, merged)
    return merged


def _save_ckpt(state: Dict[str, np.ndarray], path: str) -> None:
    import mindspore as ms

    os.makedirs(os.path.dirname(path), exist_ok=True)
    ms.save_checkpoint([{"name": name, "data": ms.Tensor(value)} for name, value in state.items()], path)


def split_checkpoint(src: str, strategy: str, out: str, prefix: str = "checkpoint_") -> int:
    """Slice the model at ``src`` (a Hugging Face directory or anything ``load_state_dict`` reads, MoE experts
    in either layout) for ``strategy``; writes ``out/rank_<r>/<prefix><r>.ckpt``. Returns the number of ranks."""
    import mindspore as ms

    from ..auto import AutoModel

    model = AutoModel.from_pretrained(src)  # checks the tensors and fuses per-expert files
    state = {name: param.asnumpy() for name, param in model.parameters_and_names()}
    if os.path.exists(out) and os.listdir(out):
        raise FileExistsError(f"{out} is not empty; give a new folder for the per-rank checkpoints")
    with tempfile.TemporaryDirectory() as work:
        _save_ckpt(state, os.path.join(work, "full", "rank_0", "full.ckpt"))
        staging = os.path.join(work, "ranks")
        ms.transform_checkpoints(os.path.join(work, "full"), staging, prefix, None, _strategy_file(strategy, work))
        ranks = sorted(glob.glob(os.path.join(staging, "rank_*")))
        shutil.copytree(staging, out, dirs_exist_ok=True)  # written whole in the staging folder first
    logger.info("split %s into %d ranks in %s", src, len(ranks), out)
    return len(ranks)


def merge_checkpoint(src: str, strategy: str, out: str, config_source: str) -> None:
    """Merge the per-rank checkpoints in ``src`` (``rank_<r>/*.ckpt``, sliced as ``strategy``) into a Hugging
    Face directory ``out`` for the model ``config_source`` describes (preset, directory or YAML)."""
    import mindspore as ms

    from ..auto import AutoConfig, model_class_for
    from ..modeling_utils import _weights_filled_by_caller

    if not glob.glob(os.path.join(src, "rank_*", "*.ckpt")):
        raise FileNotFoundError(f"{src} holds no per-rank checkpoints (expected rank_<r>/*.ckpt)")
    config = AutoConfig.from_pretrained(config_source)
    with tempfile.TemporaryDirectory() as work:
        merged_dir = os.path.join(work, "merged")
        ms.transform_checkpoints(src, merged_dir, "merged_", _strategy_file(strategy, work), None)
        files = glob.glob(os.path.join(merged_dir, "rank_0", "*.ckpt"))
        state = {name: value.asnumpy() for name, value in ms.load_checkpoint(files[0]).items()}
    with _weights_filled_by_caller():
        model = model_class_for(config, None)(config)
    model.load_state_dict(state, strict=True)  # every tensor present, every shape right
    model.save_pretrained(out)
    logger.info("merged %s into %s", src, out)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mindformers.parallel.checkpoint",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    split = sub.add_parser("split", help="a Hugging Face directory -> per-rank slices for a strategy")
    split.add_argument("--src", required=True)
    split.add_argument("--strategy", required=True, help="strategy file, or a folder of per-stage files")
    split.add_argument("--out", required=True)
    merge = sub.add_parser("merge", help="per-rank slices -> one Hugging Face directory")
    merge.add_argument("--src", required=True)
    merge.add_argument("--strategy", required=True)
    merge.add_argument("--out", required=True)
    merge.add_argument("--config", required=True, help="the model: a preset, directory or YAML")
    args = parser.parse_args(argv)
    try:
        if args.command == "split":
            print(f"{split_checkpoint(args.src, args.strategy, args.out)} ranks written to {args.out}")
        else:
            merge_checkpoint(args.src, args.strategy, args.out, args.config)
            print(f"merged into {args.out}")
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
