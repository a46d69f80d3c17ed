"""Training callbacks: a small protocol the Trainer calls, and the standard loggers of a training run.

The Trainer calls, in order::

    on_train_begin(state, args)
    on_step_begin(state, model)      # before each optimizer step; True: the trainable set changed
    on_step_end(state, logs)         # logs every `logging_steps`: loss, lr, grad_norm?, tokens_per_second, step_time
    on_evaluate(state, metrics)      # eval_loss, eval_perplexity, eval_accuracy?
    on_save(state, checkpoint_dir)
    on_train_end(state)

``state`` is the shared :class:`~mindformers.trainer.state.TrainerState`. Every callback here does nothing on
a process whose ``state.is_main_process`` is False, so the Trainer may give all ranks the same list.

The standard callbacks, and what ``args.report_to`` names them:

- :class:`ProgressCallback`: a tqdm bar on stderr (left out when ``args.disable_tqdm``).
- :class:`JsonlLoggerCallback` (``"jsonl"``): ``<output_dir>/metrics.jsonl``, one JSON object a line.
- :class:`TensorBoardCallback` (``"tensorboard"``): tensorboardX events in ``<output_dir>/tensorboard``.
- :class:`LossCurveCallback` (``"png"``): ``<output_dir>/loss_curve.png`` drawn at the end of training.

Importing this module has no side effect: tqdm, tensorboardX and matplotlib are imported when first used.
"""
import json
import math
import os
import sys
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Type, Union

from ..utils import atomic_path, logger
from .state import TrainerState

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
LOSS_CURVE_FILE = "loss_curve.png"


class TrainerCallback:
    """Base class of a training callback: every hook is a no-op, subclasses override the ones they need.

    Hooks receive the shared :class:`TrainerState`; a callback reads it and must not change it.
    """

    def on_train_begin(self, state: TrainerState, args: Any) -> None:
        """Called once before the first training step (also when resuming).

        Args:
            state: the run's state; ``start_step`` is above 0 for a resumed run.
            args: the TrainingArguments (read with ``getattr`` and a default).
        """

    def on_step_begin(self, state: TrainerState, model: Any) -> bool:
        """Called before each optimizer step (and once before the optimizer is built, for the first step).
        A callback may change which of ``model``'s parameters train (``requires_grad``) here, and then
        returns True: the trainer builds a new optimizer over the new set (fresh moments) and compiles the
        step for it (LISA, mindformers/tuners/lisa).

        Args:
            state: the run's state; ``global_step`` is the step about to run.
            model: the model being trained.

        Returns:
            True when the trainable parameters changed, else False.
        """
        return False

    def on_step_end(self, state: TrainerState, logs: Dict[str, Any]) -> None:
        """Called after an optimizer step; ``logs`` holds the training metrics on logging steps.

        Args:
            state: the run's state, ``global_step`` already counts this step.
            logs: ``loss``, ``lr``, ``tokens_per_second``, ``step_time`` and maybe ``grad_norm``; may be
                empty on a step that is not a logging step.
        """

    def on_evaluate(self, state: TrainerState, metrics: Dict[str, Any]) -> None:
        """Called after an evaluation.

        Args:
            state: the run's state.
            metrics: ``eval_loss``, ``eval_perplexity`` and maybe ``eval_accuracy``.
        """

    def on_save(self, state: TrainerState, checkpoint_dir: str) -> None:
        """Called after a checkpoint has been written.

        Args:
            state: the run's state.
            checkpoint_dir: the folder the checkpoint was written to.
        """

    def on_train_end(self, state: TrainerState) -> None:
        """Called once after the last step; callbacks close their files here.

        Args:
            state: the run's state.
        """


CallbackSpec = Union[TrainerCallback, Type[TrainerCallback]]


class CallbackList:
    """An ordered list of callbacks that forwards each hook to all of them, in order.

    Args:
        callbacks: callbacks (instances, or classes to instantiate without arguments).
    """

    def __init__(self, callbacks: Optional[Sequence[CallbackSpec]] = None):
        self._callbacks: List[TrainerCallback] = []
        for callback in callbacks or ():
            self.add(callback)

    @property
    def callbacks(self) -> List[TrainerCallback]:
        """A copy of the callbacks, in calling order."""
        return list(self._callbacks)

    def __iter__(self) -> Iterator[TrainerCallback]:
        return iter(list(self._callbacks))

    def __len__(self) -> int:
        return len(self._callbacks)

    def __repr__(self) -> str:
        return f"CallbackList([{', '.join(type(cb).__name__ for cb in self._callbacks)}])"

    def add(self, callback: CallbackSpec) -> TrainerCallback:
        """Append a callback.

        Args:
            callback: an instance, or a :class:`TrainerCallback` subclass to instantiate without arguments.

        Returns:
            The callback instance added.
        """
        if isinstance(callback, type):
            if not issubclass(callback, TrainerCallback):
                raise TypeError(f"expected a TrainerCallback subclass or instance, found the class {callback.__name__}")
            callback = callback()
        elif not isinstance(callback, TrainerCallback):
            raise TypeError(
                f"expected a TrainerCallback subclass or instance, found {type(callback).__name__}; "
                "subclass mindformers.trainer.callbacks.TrainerCallback"
            )
        if any(type(cb) is type(callback) for cb in self._callbacks):
            logger.warning(
                "adding a second %s to the callbacks (%r); it will run twice", type(callback).__name__, self
            )
        self._callbacks.append(callback)
        return callback

    def pop(self, callback: CallbackSpec) -> Optional[TrainerCallback]:
        """Remove and return a callback.

        Args:
            callback: the instance to remove, or a class: the first callback of exactly that class is removed.

        Returns:
            The removed instance, or None when no callback matched.
        """
        for i, cb in enumerate(self._callbacks):
            if cb is callback or (isinstance(callback, type) and type(cb) is callback):
                return self._callbacks.pop(i)
        return None

    def remove(self, callback: CallbackSpec) -> None:
        """Remove a callback (like :meth:`pop`) and raise when none matched.

        Args:
            callback: the instance to remove, or the class of the callback to remove.
        """
        if self.pop(callback) is None:
            name = callback.__name__ if isinstance(callback, type) else repr(callback)
            raise ValueError(f"{name} is not in the callbacks: {self!r}")

    def on_train_begin(self, state: TrainerState, args: Any) -> None:
        """Forward :meth:`TrainerCallback.on_train_begin` to every callback."""
        for cb in self._callbacks:
            cb.on_train_begin(state, args)

    def on_step_begin(self, state: TrainerState, model: Any) -> bool:
        """Forward :meth:`TrainerCallback.on_step_begin` to every callback; True if any changed the
        trainable parameters."""
        changed = [bool(cb.on_step_begin(state, model)) for cb in self._callbacks]
        return any(changed)

    def on_step_end(self, state: TrainerState, logs: Dict[str, Any]) -> None:
        """Forward :meth:`TrainerCallback.on_step_end` to every callback."""
        for cb in self._callbacks:
            cb.on_step_end(state, logs)

    def on_evaluate(self, state: TrainerState, metrics: Dict[str, Any]) -> None:
        """Forward :meth:`TrainerCallback.on_evaluate` to every callback."""
        for cb in self._callbacks:
            cb.on_evaluate(state, metrics)

    def on_save(self, state: TrainerState, checkpoint_dir: str) -> None:
        """Forward :meth:`TrainerCallback.on_save` to every callback."""
        for cb in self._callbacks:
            cb.on_save(state, checkpoint_dir)

    def on_train_end(self, state: TrainerState) -> None:
        """Forward :meth:`TrainerCallback.on_train_end` to every callback.

        Every callback gets the call (so each closes its files) even when an earlier one raises; the first
        error is raised afterwards.
        """
        first_error: Optional[BaseException] = None
        for cb in self._callbacks:
            try:
                cb.on_train_end(state)
            except Exception as err:  # noqa: BLE001 - re-raised below, after the other callbacks closed
                logger.error("%s.on_train_end failed: %s", type(cb).__name__, err)
                first_error = first_error or err
        if first_error is not None:
            raise first_error


# ----------------------------------------------------------------------------------------------------------
# helpers


def _as_float(value: Any) -> Optional[float]:
    """A metric value as a Python float (numpy / MindSpore scalars included); None if it is not a number."""
    if isinstance(value, (str, bytes)) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _json_value(value: Any) -> Any:
    """A metric value for JSON: ints stay ints, floats keep 6 significant digits, NaN/inf become null."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if "int" in str(getattr(value, "dtype", "")):  # a numpy / MindSpore integer scalar
        return int(value)
    number = _as_float(value)
    if number is None:
        return str(value)
    if not math.isfinite(number):
        return None  # JSON has no NaN/Infinity; strict readers (jq, JavaScript) reject them
    # Significant digits, not decimals: a learning rate of 3e-5 must not round to 0.
    return float(f"{number:.6g}")


def _format_number(value: float) -> str:
    """A short human form: 4 decimals for ordinary magnitudes, scientific otherwise."""
    if value == 0 or (1e-3 <= abs(value) < 1e5):
        return f"{value:.4f}"
    return f"{value:.3e}"


def _output_dir(state: TrainerState, args: Any) -> str:
    """``args.output_dir`` when given, else ``state.output_dir``."""
    return getattr(args, "output_dir", None) or state.output_dir


# ----------------------------------------------------------------------------------------------------------
# progress bar


class ProgressCallback(TrainerCallback):
    """A tqdm progress bar over ``state.max_steps`` on stderr, on the main process only.

    The bar starts at ``state.start_step`` (so a resumed run shows its true position and tqdm's rate and ETA
    count only this process's steps); its postfix shows the latest ``loss``, ``aux`` (MoE models' load-balancing
    loss), ``lr`` (scientific) and ``tok/s``. Evaluation metrics are printed on their own line above the bar.
    """

    def __init__(self):
        self._bar = None

    def on_train_begin(self, state: TrainerState, args: Any) -> None:
        if not state.is_main_process:
            return
        from tqdm import tqdm

        self._close()
        self._bar = tqdm(
            total=state.max_steps or None,
            initial=state.start_step,
            desc="train",
            unit="step",
            file=sys.stderr,  # looked up now, not at import, so a redirected stderr is honoured
            dynamic_ncols=True,
            leave=True,
        )

    def on_step_end(self, state: TrainerState, logs: Dict[str, Any]) -> None:
        if self._bar is None or not state.is_main_process:
            return
        parts = []
        loss, aux, lr, tps = (_as_float(logs.get(k)) for k in ("loss", "aux_loss", "lr", "tokens_per_second"))
        if loss is not None:
            parts.append(f"loss={loss:.4f}")
        if aux is not None:
            parts.append(f"aux={aux:.3f}")
        if lr is not None:
            parts.append(f"lr={lr:.2e}")
        if tps is not None:
            parts.append(f"tok/s={self._bar.format_sizeof(tps)}")
        if parts:
            self._bar.set_postfix_str(", ".join(parts), refresh=False)
        self._advance_to(state.global_step)

    def on_evaluate(self, state: TrainerState, metrics: Dict[str, Any]) -> None:
        if not state.is_main_process:
            return
        from tqdm import tqdm

        shown = []
        for key, value in metrics.items():
            number = _as_float(value)
            shown.append(f"{key}={_format_number(number) if number is not None else value}")
        tqdm.write(f"step {state.global_step}: " + " ".join(shown), file=sys.stderr)

    def on_train_end(self, state: TrainerState) -> None:
        if self._bar is None:
            return
        self._advance_to(state.global_step)
        self._close()

    def _advance_to(self, step: int) -> None:
        # The bar follows global_step, so it is right whether the trainer calls on_step_end every step or
        # only on logging steps.
        if step > self._bar.n:
            self._bar.update(step - self._bar.n)

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# ----------------------------------------------------------------------------------------------------------
# metrics.jsonl


class JsonlLoggerCallback(TrainerCallback):
    """Append one JSON object a line to ``<output_dir>/metrics.jsonl`` for every logged step and evaluation.

    Each record holds ``step`` (global_step), ``epoch``, ``time`` (Unix time in seconds) and the metrics
    (floats kept to 6 significant digits; NaN and infinity written as null, as JSON has neither). Each line
    is flushed as it is written, so a killed run keeps its log.

    A fresh run (``state.start_step == 0``) starts a new file. A resumed run appends; records of steps after
    ``start_step`` (logged by the killed run after its last checkpoint, so rolled back) and a half-written
    last line are dropped first, so steps stay in order. This is the JSONL counterpart of TensorBoard's
    ``purge_step``.

    Args:
        filename: the file's name inside the output directory.
    """

    def __init__(self, filename: str = METRICS_FILE):
        self.filename = filename
        self.path: Optional[str] = None
        self._file = None

    def on_train_begin(self, state: TrainerState, args: Any) -> None:
        if not state.is_main_process:
            return
        self._close()
        self.path = os.path.join(_output_dir(state, args), self.filename)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        if state.start_step > 0:
            self._drop_records_after(state.start_step)
            mode = "a"
        else:
            mode = "w"
        self._file = open(self.path, mode, encoding="utf-8")

    def on_step_end(self, state: TrainerState, logs: Dict[str, Any]) -> None:
        if logs:
            self._write(state, logs)

    def on_evaluate(self, state: TrainerState, metrics: Dict[str, Any]) -> None:
        self._write(state, metrics)

    def on_train_end(self, state: TrainerState) -> None:
        self._close()

    def _write(self, state: TrainerState, metrics: Dict[str, Any]) -> None:
        if not state.is_main_process:
            return
        if self._file is None:
            raise RuntimeError(
                "JsonlLoggerCallback got a metric before on_train_begin (or after on_train_end); the trainer "
                "must call on_train_begin(state, args) first"
            )
        record: Dict[str, Any] = {"step": int(state.global_step), "epoch": round(float(state.epoch), 4),
                                  "time": round(time.time(), 3)}
        for key, value in metrics.items():
            record[key] = _json_value(value)
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()

    def _drop_records_after(self, start_step: int) -> None:
        """Rewrite the file without records of steps above ``start_step`` and without a broken last line."""
        if not os.path.isfile(self.path):
            return
        with open(self.path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        kept = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if isinstance(record, dict) and int(record.get("step", 0)) <= start_step:
                kept.append(line)
        if len(kept) == len(lines) and not _ends_without_newline(self.path):
            return
        logger.warning(
            "%s: dropping %d record(s) after step %d or cut short (the run is resuming from step %d)",
            self.path, len(lines) - len(kept), start_step, start_step,
        )
        with atomic_path(self.path) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write("".join(line + "\n" for line in kept))

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _ends_without_newline(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


# ----------------------------------------------------------------------------------------------------------
# TensorBoard


class TensorBoardCallback(TrainerCallback):
    """Write scalars to a tensorboardX ``SummaryWriter`` in ``<output_dir>/tensorboard``.

    Training logs become ``train/<key>`` (``train/loss``, ``train/lr``, ``train/tokens_per_second``, ...),
    evaluation metrics ``eval/<key without "eval_">`` (``eval/loss``, ``eval/perplexity``, ...), all at
    ``global_step``. Each run (or resumption) writes a new event file with ``purge_step=start_step``, so
    TensorBoard hides the rolled-back steps of a killed run, and an earlier run's curves when a fresh run
    reuses the folder, as :class:`JsonlLoggerCallback` does. The writer is flushed on every evaluation and
    save and closed at train end.

    Args:
        subdir: the event folder's name inside the output directory.
    """

    def __init__(self, subdir: str = TENSORBOARD_DIR):
        self.subdir = subdir
        self.log_dir: Optional[str] = None
        self._writer = None

    def on_train_begin(self, state: TrainerState, args: Any) -> None:
        if not state.is_main_process:
            return
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ImportError(
                "TensorBoardCallback needs tensorboardX (`pip install tensorboardX`); or leave "
                "'tensorboard' out of TrainingArguments.report_to"
            ) from None
        self._close()
        self.log_dir = os.path.join(_output_dir(state, args), self.subdir)
        self._writer = SummaryWriter(
            logdir=self.log_dir,
            # TensorBoard drops the events of earlier files from this step on: the rolled-back steps of a
            # killed run, or all of an earlier run in the same folder when this one starts fresh.
            purge_step=state.start_step,
            # The event file is named after the time in whole seconds and opened with "wb": without a
            # suffix, a run resumed within the same second would overwrite the killed run's events.
            filename_suffix=f".{os.getpid()}.step{state.start_step}",
        )

    def on_step_end(self, state: TrainerState, logs: Dict[str, Any]) -> None:
        self._add_scalars(state, logs, prefix="train/", strip="")

    def on_evaluate(self, state: TrainerState, metrics: Dict[str, Any]) -> None:
        self._add_scalars(state, metrics, prefix="eval/", strip="eval_")
        if self._writer is not None and state.is_main_process:
            self._writer.flush()

    def on_save(self, state: TrainerState, checkpoint_dir: str) -> None:
        if self._writer is not None and state.is_main_process:
            self._writer.flush()

    def on_train_end(self, state: TrainerState) -> None:
        self._close()

    def _add_scalars(self, state: TrainerState, metrics: Dict[str, Any], prefix: str, strip: str) -> None:
        if self._writer is None or not state.is_main_process:
            return
        for key, value in metrics.items():
            number = _as_float(value)
            if number is None:
                continue
            name = key[len(strip):] if strip and key.startswith(strip) else key
            self._writer.add_scalar(prefix + name, number, global_step=state.global_step)

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# ----------------------------------------------------------------------------------------------------------
# loss curve


def loss_points(log_history: Sequence[Dict[str, Any]]) -> Dict[str, List[tuple]]:
    """The (step, loss) points of a run's log history.

    Args:
        log_history: ``TrainerState.log_history``: dicts with ``step`` and ``loss`` (training) or
            ``eval_loss`` (evaluation). Entries without a step or with a non-finite loss are skipped.

    Returns:
        ``{"train": [(step, loss), ...], "eval": [(step, eval_loss), ...]}``, each sorted by step.
    """
    points: Dict[str, List[tuple]] = {"train": [], "eval": []}
    for entry in log_history:
        step = entry.get("step", entry.get("global_step"))
        if step is None:
            continue
        for kind, key in (("train", "loss"), ("eval", "eval_loss")):
            value = _as_float(entry.get(key))
            if value is not None and math.isfinite(value):
                points[kind].append((int(step), value))
    return {kind: sorted(pts) for kind, pts in points.items()}


def plot_loss_curve(log_history: Sequence[Dict[str, Any]], path: str, title: str = "Loss") -> bool:
    """Draw training loss vs step (a line) and evaluation loss (points) into a PNG, written atomically.

    Uses matplotlib's Agg canvas directly, so it needs no display and leaves pyplot's global backend alone.

    Args:
        log_history: the run's ``TrainerState.log_history`` (see :func:`loss_points`).
        path: the PNG to write; an existing file is replaced only once the new one is complete.
        title: the plot's title.

    Returns:
        True if the plot was written, False when the history holds no loss to draw.
    """
    points = loss_points(log_history)
    if not points["train"] and not points["eval"]:
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if points["train"]:
        steps, losses = zip(*points["train"])
        ax.plot(steps, losses, color="tab:blue", linewidth=1.2, label="train loss")
    if points["eval"]:
        steps, losses = zip(*points["eval"])
        ax.plot(steps, losses, "o--", color="tab:orange", markersize=5, linewidth=1, label="eval loss")
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    # atomic_path's temporary name ends in ".tmp", from which savefig cannot infer the format: name it.
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return True


class LossCurveCallback(TrainerCallback):
    """At the end of training, draw ``<output_dir>/loss_curve.png`` from ``state.log_history``.

    The training loss is a line over steps and evaluation losses are points (see :func:`plot_loss_curve`).
    A resumed run's history comes from its checkpoint, so the curve covers the whole run.

    Args:
        filename: the PNG's name inside the output directory.
    """

    def __init__(self, filename: str = LOSS_CURVE_FILE):
        self.filename = filename
        self.path: Optional[str] = None
        self._output_dir: Optional[str] = None

    def on_train_begin(self, state: TrainerState, args: Any) -> None:
        self._output_dir = _output_dir(state, args)

    def on_train_end(self, state: TrainerState) -> None:
        if not state.is_main_process:
            return
        output_dir = self._output_dir or state.output_dir
        self.path = os.path.join(output_dir, self.filename)
        title = f"Loss: {os.path.basename(os.path.normpath(output_dir))} ({state.global_step} steps)"
        if not plot_loss_curve(state.log_history, self.path, title=title):
            logger.info("no loss in the log history; %s not drawn", self.path)


# ----------------------------------------------------------------------------------------------------------
# defaults

REPORTERS = {"jsonl": JsonlLoggerCallback, "tensorboard": TensorBoardCallback, "png": LossCurveCallback}
"""``TrainingArguments.report_to`` names and the callbacks they select."""


def default_callbacks(args: Any) -> List[TrainerCallback]:
    """The standard callbacks a run asks for.

    Args:
        args: TrainingArguments; reads ``report_to`` (a list of ``"jsonl"``, ``"tensorboard"``, ``"png"``,
            or ``"all"`` / ``"none"``; default all three) and ``disable_tqdm`` (default False).

    Returns:
        New callbacks: :class:`ProgressCallback` unless ``disable_tqdm``, then one per ``report_to`` name.
    """
    report_to = getattr(args, "report_to", None)
    if report_to is None or report_to == "all" or report_to == ["all"]:
        names = list(REPORTERS)
    elif report_to == "none" or report_to == ["none"]:
        names = []
    else:
        names = [report_to] if isinstance(report_to, str) else list(report_to)
    unknown = [n for n in names if n not in REPORTERS]
    if unknown:
        raise ValueError(
            f"unknown report_to name(s) {unknown}; valid names are {sorted(REPORTERS)}, 'all' or 'none'"
        )
    callbacks: List[TrainerCallback] = []
    if not getattr(args, "disable_tqdm", False):
        callbacks.append(ProgressCallback())
    seen = set()
    for name in names:
        if name not in seen:
            seen.add(name)
            callbacks.append(REPORTERS[name]())
    return callbacks
