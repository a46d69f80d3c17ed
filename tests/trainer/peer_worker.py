"""One worker of the killed-worker test (tests/trainer/test_faults.py): data-parallel training of a tiny Llama
under msrun for far longer than the test waits, writing its pid to ``<out>/rank<r>.pid`` and its last step
to ``<out>/rank<r>.step`` so the test knows whom to kill, and when.

    msrun --worker_num=2 --local_worker_num=2 ... tests/trainer/peer_worker.py OUT DATA
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from mindformers import AutoTokenizer, Trainer, TrainerCallback, TrainingArguments, init_context  # noqa: E402
from mindformers.utils import atomic_write_text  # noqa: E402
from tests.trainer.conftest import tiny_llama  # noqa: E402


class Progress(TrainerCallback):
    def __init__(self, path):
        self.path = path

    def on_step_end(self, state, logs):
        atomic_write_text(self.path, str(state.global_step))


def main(out, data):
    rank, _ = init_context(use_parallel=True, context_config={"mode": 0, "device_target": "CPU"})
    atomic_write_text(os.path.join(out, f"rank{rank}.pid"), str(os.getpid()))
    args = TrainingArguments(output_dir=os.path.join(out, "run"), max_steps=100000, batch_size=2, seq_length=64,
                             optim="sgd", learning_rate=0.1, logging_steps=1000, save_steps=0, disable_tqdm=True,
                             report_to=[])
    trainer = Trainer(model=tiny_llama(), tokenizer=AutoTokenizer.from_pretrained("smollm2_135m_instruct"),
                      args=args, train_dataset=data, callbacks=[Progress(os.path.join(out, f"rank{rank}.step"))])
    trainer.train()


if __name__ == "__main__":
    main(*sys.argv[1:])
