"""Training checkpoints: ``<output_dir>/checkpoint-<step>/`` with everything needed to continue exactly.

A checkpoint holds the trained weights (only the adapters when tuning, in PEFT's format; the whole model
otherwise, in Hugging Face's), ``optimizer.safetensors`` (moments and step counters),
``trainer_state.json`` (step, epoch, logs) and ``training_args.yaml``. It is written into a hidden
temporary folder that is renamed into place when complete, so a killed run never leaves a half-written
checkpoint and an older checkpoint of the same step is replaced only by a complete one. Checkpoints are
deleted the same way round (renamed to a hidden name, then deleted), so none is ever seen half-deleted.
Hidden folders a killed run leaves are ignored by resume and deleted by the next run.

A save the storage refuses (disk full, file size limit) raises :class:`CheckpointWriteError`, which says which
file failed, why, and which checkpoint is still intact to resume from (tests/trainer/test_faults.py).
"""
import contextlib
import json
import os
import re
import shutil
import tempfile
from typing import Dict, List, Optional

import numpy as np
from safetensors.numpy import save_file

from ..checkpoint import load_state_dict
from ..utils import FileWriteError, atomic_path, atomic_write_text, read_json_object, write_parameter
from .state import TrainerState

PREFIX = "checkpoint-"
_STEP = re.compile(rf"^{PREFIX}(\d+)$")


def tuner_of(model):
    """The tuner model holding ``model``'s adapters, or None for plain (full) training."""
    from ..tuners import TunerModel

    return model if isinstance(model, TunerModel) else getattr(model, "_tuner", None)


def list_checkpoints(output_dir: str) -> List[str]:
    """Complete checkpoint folders in ``output_dir``, oldest step first."""
    if not os.path.isdir(output_dir):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(output_dir) if (m := _STEP.match(name))]
    return [os.path.join(output_dir, name) for _, name in sorted(found)]


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, file size limit, ...). ``errno`` is the OS error's; the
    message names the checkpoint, the file, the OS error and the checkpoint that is still intact."""


def _hide(path: str) -> str:
    """Move the folder ``path`` into a new hidden ``.old-checkpoint-*`` folder in one rename; return that
    folder, for the caller to delete. A kill before the deletion ends leaves only the hidden folder."""
    trash = tempfile.mkdtemp(prefix=f".old-{PREFIX}", dir=os.path.dirname(path))
    os.replace(path, os.path.join(trash, "old"))
    return trash


def _write_failed(output_dir: str, final: str, error: FileWriteError) -> CheckpointWriteError:
    """The error a user sees when the storage refused a checkpoint's file: what, why, and what is left."""
    name = os.path.basename(final)
    if os.path.isdir(final):
        intact = f"the {name} saved earlier is intact"
    else:
        earlier = list_checkpoints(output_dir)
        intact = (f"the previous checkpoint {earlier[-1]} is intact" if earlier
                  else f"there is no earlier checkpoint in {output_dir}")
    return CheckpointWriteError(
        error.errno, f"could not save {final}: writing its {os.path.basename(error.filename or '?')} failed: "
        f"{error.strerror}. The partial {name} was deleted and {intact}; free space on "
        f"the disk of {output_dir} (or raise the file size limit) and resume with resume_from_checkpoint=True")


def save_checkpoint(output_dir: str, model, optimizer, state: TrainerState, args,
                    weights: Optional[Dict[str, np.ndarray]] = None,
                    moments: Optional[Dict[str, np.ndarray]] = None) -> str:
    """Write ``checkpoint-<global_step>`` atomically; return its path.

    Args:
        weights, moments: the model's and optimizer's tensors to write instead of the live ones (whole tensors
            gathered from a tensor-parallel run).

    Raises:
        CheckpointWriteError: the storage refused a file (disk full, file size limit); nothing of the new
            checkpoint is left and the earlier ones are untouched.
    """
    os.makedirs(output_dir, exist_ok=True)
    final = os.path.join(output_dir, f"{PREFIX}{state.global_step}")
    tmp = tempfile.mkdtemp(prefix=f".{PREFIX}{state.global_step}.", dir=output_dir)
    try:
        tuner = tuner_of(model)
        if tuner is not None:
            with tuner.saving_tensors(weights) if weights is not None else contextlib.nullcontext():
                tuner.save_checkpoint_adapters(tmp)
        else:
            model.save_pretrained(tmp, state=weights)
        if moments is None:
            moments = {k: v.asnumpy() for k, v in optimizer.state_parameters().items()}
        with atomic_path(os.path.join(tmp, "optimizer.safetensors")) as path:
            # np.require, not ascontiguousarray: that makes a 0-d moment (SWIFT Side's alpha) [1]
            save_file({k: np.require(v, requirements="C") for k, v in moments.items()}, path)
        atomic_write_text(os.path.join(tmp, "trainer_state.json"), json.dumps(state.to_dict(), indent=1) + "\n")
        args.to_yaml(os.path.join(tmp, "training_args.yaml"))
        if os.path.exists(final):  # same step saved again: swap in the complete new one
            trash = _hide(final)
            os.replace(tmp, final)
            shutil.rmtree(trash)
        else:
            os.replace(tmp, final)
    except FileWriteError as error:
        raise _write_failed(output_dir, final, error) from error
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return final


def remove_stale_temporaries(output_dir: str) -> List[str]:
    """Delete the hidden folders a killed save left behind (``.checkpoint-<step>.*``, ``.old-checkpoint-*``)."""
    if not os.path.isdir(output_dir):
        return []
    stale = [os.path.join(output_dir, name) for name in os.listdir(output_dir)
             if name.startswith((f".{PREFIX}", f".old-{PREFIX}"))]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def earlier_run_files(output_dir: str) -> List[str]:
    """What an earlier run left in ``output_dir`` that a new run would replace: checkpoints and metrics."""
    found = [os.path.basename(c) for c in list_checkpoints(output_dir)]
    if os.path.isfile(os.path.join(output_dir, "metrics.jsonl")):
        found.append("metrics.jsonl")
    return found


def rotate_checkpoints(output_dir: str, limit: Optional[int], keep: Optional[str] = None) -> List[str]:
    """Delete the oldest checkpoints beyond ``limit`` (never ``keep``); return the deleted paths."""
    if not limit:
        return []
    checkpoints = list_checkpoints(output_dir)
    doomed = [c for c in checkpoints[: max(0, len(checkpoints) - limit)] if c != keep]
    for path in doomed:
        shutil.rmtree(_hide(path))  # never a visible checkpoint with files missing, even if killed meanwhile
    return doomed


def resolve_resume(resume, output_dir: str) -> Optional[str]:
    """The checkpoint to resume from: a path, or the latest in ``output_dir`` for True."""
    if resume in (None, False, ""):
        return None
    if resume is True or str(resume).lower() == "true":
        found = list_checkpoints(output_dir)
        if not found:
            raise FileNotFoundError(f"resume_from_checkpoint=True but {output_dir} holds no {PREFIX}<step> folder")
        return found[-1]
    if not os.path.isdir(resume):
        raise FileNotFoundError(f"checkpoint to resume from not found: {resume}; checkpoints in {output_dir}: "
                                f"{[os.path.basename(c) for c in list_checkpoints(output_dir)] or 'none'}")
    return resume


def checkpoint_step(path: str) -> int:
    """The ``global_step`` a checkpoint folder was saved at."""
    state = read_json_object(os.path.join(path, "trainer_state.json"), "a checkpoint")
    return int(state.get("global_step", 0))


def load_checkpoint(path: str, model, optimizer, tensor_parallel=None) -> TrainerState:
    """Restore weights, optimizer state and trainer state from a checkpoint folder (a tensor-parallel run
    takes its slices of the whole tensors). ``optimizer`` None: its state is not restored (a run whose
    trainable set starts anew at the checkpoint's step: LISA)."""
    for name in ("trainer_state.json", "optimizer.safetensors"):
        if not os.path.isfile(os.path.join(path, name)):
            raise FileNotFoundError(f"{path} is not a complete training checkpoint: {name} is missing "
                                    f"(found {sorted(os.listdir(path))})")
    tuner = tuner_of(model)
    if tuner is not None:
        for name in tuner.peft_config:
            directory = path if name == "default" else os.path.join(path, name)
            weights = load_state_dict(os.path.join(directory, "adapter_model.safetensors"))
            if tensor_parallel is not None:  # file keys -> parameter paths, which the split layout names
                from ..tuners.tuner_model import saved_paths

                paths = saved_paths(tuner.base_model, name, tuner.peft_config[name], tuner.checkpoint_layout(name))
                sliced = tensor_parallel.slice({paths[k]: v for k, v in weights.items() if k in paths})
                weights = {k: sliced[paths[k]] if k in paths else v for k, v in weights.items()}
            tuner.load_adapter_weights(name, weights, peft_keys=tuner.checkpoint_layout(name), source=directory)
            tuner.restore_checkpoint_state(name, directory)
    else:
        weights = load_state_dict(path)
        model.load_state_dict(weights if tensor_parallel is None else tensor_parallel.slice(weights), strict=True)
    saved = load_state_dict(os.path.join(path, "optimizer.safetensors"))
    if tensor_parallel is not None:
        saved = tensor_parallel.slice(saved)
    current = optimizer.state_parameters() if optimizer is not None else {}
    missing = sorted(set(current) - set(saved))
    if missing:
        raise ValueError(f"{path}: optimizer state lacks {missing[:5]}; was it saved for another model or optimizer?")
    wrong = [f"{name}: file {tuple(np.shape(saved[name]))} vs optimizer {tuple(param.shape)}"
             for name, param in current.items() if tuple(np.shape(saved[name])) != tuple(param.shape)]
    if wrong:
        raise ValueError(f"{path}: optimizer state of other shapes: {wrong[:5]}; was it saved for another model?")
    for name, param in current.items():
        write_parameter(param, np.asarray(saved[name]))
    return TrainerState.from_dict(read_json_object(os.path.join(path, "trainer_state.json"), "a checkpoint"))
