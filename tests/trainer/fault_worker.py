"""Short training runs (tiny Llama, evaluation every 2 steps, a checkpoint every 3) for
tests/trainer/test_faults.py. :func:`train` is the run; the test makes the uninterrupted reference run and the
resumed runs in its own process, and these in processes of their own:

    python tests/trainer/fault_worker.py kill OUT TRAIN EVAL KIND N  # SIGKILL itself at the N-th moment of KIND
    python tests/trainer/fault_worker.py refuse OUT TRAIN EVAL      # files may not grow past 1 MB after the
                                                                    # first checkpoint (a full disk)

A kill is ``os.kill(getpid(), SIGKILL)``, not an exception (:class:`FaultPoints`). ``refuse`` writes the
error it got to ``OUT.json`` and exits with it.
"""
import contextlib
import json
import os
import resource
import signal
import sys
from typing import Iterator, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from mindformers import AutoTokenizer, Trainer, TrainerCallback, TrainingArguments  # noqa: E402
from mindformers.trainer import trainer as trainer_module  # noqa: E402
from tests.trainer.conftest import tiny_llama  # noqa: E402

KINDS = ("save", "eval", "step")
MAX_STEPS = 8
FILE_SIZE_LIMIT = 2**20


def train(out: str, train_data: str, eval_data: str, tok=None, resume=None, overwrite: bool = False, callbacks=()):
    """The run every trial makes: 24 chats in batches of 4 (6 steps an epoch, so 8 steps cross an epoch),
    evaluation on 8 chats (2 batches) at steps 2, 4, 6, 8, checkpoints at 3, 6 and the final 8, at most two
    kept (the final save deletes checkpoint-3). Returns (state, model)."""
    args = TrainingArguments(output_dir=out, max_steps=MAX_STEPS, batch_size=4, eval_batch_size=4, seq_length=64,
                             learning_rate=1e-2, warmup_steps=2, lr_scheduler_type="cosine", logging_steps=1,
                             eval_steps=2, save_steps=3, save_total_limit=2, disable_tqdm=True,
                             report_to=["jsonl"], overwrite_output_dir=overwrite)
    model = tiny_llama()
    trainer = Trainer(model=model, tokenizer=tok or AutoTokenizer.from_pretrained("smollm2_135m_instruct"), args=args,
                      train_dataset=train_data, eval_dataset=eval_data, callbacks=list(callbacks))
    return trainer.train(resume_training=resume), model


class FaultPoints:
    """The moments of a run where a kill matters, counted per kind; with ``kill=(kind, n)`` the process
    SIGKILLs itself at the n-th moment of that kind (1-based).

    - ``step``: before and after each compiled training step (after: the weights are updated in memory, the
      step is not yet counted or logged);
    - ``eval``: before and after each evaluation batch;
    - ``save``: inside ``Trainer._save``, at every ``os.fsync`` of a file just written (the file is cut to
      half its size first: a kill in the middle of writing it), every ``os.replace`` (a file or the whole
      checkpoint folder complete under its temporary name, not yet renamed; an old checkpoint about to be
      hidden for deletion) and every ``os.unlink`` / ``os.rmdir`` (deleting an old checkpoint beyond
      ``save_total_limit``).
    """

    def __init__(self, kill: Optional[Tuple[str, int]] = None):
        self.kill = kill
        self.counts = dict.fromkeys(KINDS, 0)
        self._saving = False

    def reached(self, kind: str, what: str, before_kill=None) -> None:
        self.counts[kind] += 1
        if self.kill == (kind, self.counts[kind]):
            if before_kill is not None:
                before_kill()
            sys.stderr.write(f"fault injection: SIGKILL at {kind} #{self.counts[kind]}: {what}\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    @contextlib.contextmanager
    def installed(self) -> Iterator["FaultPoints"]:
        """Patch the counted functions for the duration of the block."""
        points = self
        saved = {name: getattr(os, name) for name in ("fsync", "replace", "unlink", "rmdir")}
        real_save, real_eval_step = trainer_module.Trainer._save, trainer_module.Trainer._eval_step
        real_steps_init = trainer_module._StepFunctions.__init__

        def save(trainer, *args, **kwargs):
            points._saving = True
            try:
                return real_save(trainer, *args, **kwargs)
            finally:
                points._saving = False

        def fsync(fd):
            if points._saving:
                path = os.readlink(f"/proc/self/fd/{fd}")
                points.reached("save", f"writing {path}", lambda: os.truncate(path, os.path.getsize(path) // 2))
            return saved["fsync"](fd)

        def counted(name):
            def call(path, *args, **kwargs):
                if points._saving:
                    points.reached("save", f"{name} {path} {args[:1]}")
                return saved[name](path, *args, **kwargs)
            return call

        def eval_step(trainer, model):
            evaluate_batch = real_eval_step(trainer, model)

            def counted_batch(*args):
                points.reached("eval", "before an evaluation batch")
                out = evaluate_batch(*args)
                points.reached("eval", "after an evaluation batch")
                return out
            return counted_batch

        def steps_init(steps, *args, **kwargs):
            real_steps_init(steps, *args, **kwargs)
            step = steps.step

            def counted_step(*step_args):
                points.reached("step", "before a training step")
                out = step(*step_args)
                points.reached("step", "after a training step")
                return out
            steps.step = counted_step

        os.fsync = fsync
        for name in ("replace", "unlink", "rmdir"):
            setattr(os, name, counted(name))
        trainer_module.Trainer._save, trainer_module.Trainer._eval_step = save, eval_step
        trainer_module._StepFunctions.__init__ = steps_init
        try:
            yield self
        finally:
            for name, function in saved.items():
                setattr(os, name, function)
            trainer_module.Trainer._save, trainer_module.Trainer._eval_step = real_save, real_eval_step
            trainer_module._StepFunctions.__init__ = real_steps_init


class FileSizeLimitAfterFirstSave(TrainerCallback):
    """Once the first checkpoint is written, no file of this process may grow past 1 MB (RLIMIT_FSIZE, with
    SIGXFSZ ignored: a write past it fails with EFBIG, "File too large", where a full disk fails with ENOSPC):
    the next checkpoint's model.safetensors (6 MB) cannot be written."""

    def on_save(self, state, checkpoint_dir):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def main(action: str, out: str, train_data: str, eval_data: str, *point: str) -> None:
    if action == "kill":
        with FaultPoints(kill=(point[0], int(point[1]))).installed():
            train(out, train_data, eval_data)
        sys.exit(f"fault injection: the run ended before {point[0]} #{point[1]}")
    elif action == "refuse":
        try:
            train(out, train_data, eval_data, callbacks=[FileSizeLimitAfterFirstSave()])
        except Exception as error:  # pylint: disable=broad-except
            with open(out + ".json", "w", encoding="utf-8") as f:
                json.dump({"type": type(error).__name__, "errno": getattr(error, "errno", None),
                           "message": str(error), "cause": repr(error.__cause__)}, f)
            raise
    else:
        sys.exit(f"unknown action {action!r}: kill or refuse")


if __name__ == "__main__":
    main(*sys.argv[1:])
