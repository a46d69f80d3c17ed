"""One worker of the data-parallel test (tests/trainer/test_data_parallel.py): trains a tiny Llama on real chats
and writes its weights and logged losses to ``<out>/rank<r>.npz`` / ``<out>/rank<r>.json``.

    msrun --worker_num=2 --local_worker_num=2 ... tests/trainer/dp_worker.py OUT DATA BATCH STEPS True
    python tests/trainer/dp_worker.py OUT DATA BATCH STEPS False
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from mindformers import AutoTokenizer, Trainer, TrainingArguments, init_context  # noqa: E402
from tests.trainer.conftest import tiny_llama  # noqa: E402


def main(out, data, batch_size, steps, use_parallel):
    rank, size = init_context(use_parallel=use_parallel == "True", context_config={"mode": 0, "device_target": "CPU"})
    model = tiny_llama()
    args = TrainingArguments(output_dir=os.path.join(out, f"run{size}"), max_steps=int(steps),
                             batch_size=int(batch_size), seq_length=64, optim="sgd", learning_rate=0.5,
                             logging_steps=1, save_steps=0, disable_tqdm=True, report_to=[])
    trainer = Trainer(model=model, tokenizer=AutoTokenizer.from_pretrained("smollm2_135m_instruct"), args=args,
                      train_dataset=data)
    state = trainer.train()
    np.savez(os.path.join(out, f"world{size}_rank{rank}.npz"), **model.state_dict())
    with open(os.path.join(out, f"world{size}_rank{rank}.json"), "w") as f:
        json.dump({"rank": rank, "size": size, "losses": [h["loss"] for h in state.log_history if "loss" in h],
                   "world_size": trainer.world_size}, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
