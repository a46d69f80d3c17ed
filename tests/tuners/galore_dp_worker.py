"""One worker of GaLore's data-parallel test (tests/tuners/test_galore.py): trains a tiny Llama with
optim="galore_adamw" on real chats and writes its weights and optimizer state (projections included) to
``<out>/world<size>_rank<r>.npz``.

    msrun --worker_num=2 --local_worker_num=2 ... tests/tuners/galore_dp_worker.py OUT DATA BATCH STEPS True
    python tests/tuners/galore_dp_worker.py OUT DATA BATCH STEPS False
"""
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
                             batch_size=int(batch_size), seq_length=64, learning_rate=2e-2, logging_steps=1,
                             save_steps=0, disable_tqdm=True, report_to=[], optim="galore_adamw",
                             optim_target_modules=["self_attn", "mlp"], optim_args="rank=4, update_proj_gap=1")
    import mindformers.trainer.trainer as trainer_module  # every rank's optimizer (only rank 0 saves checkpoints)

    built = []
    build = trainer_module.build_optimizer
    trainer_module.build_optimizer = lambda m, a: built.append(build(m, a)) or built[-1]
    trainer = Trainer(model=model, tokenizer=AutoTokenizer.from_pretrained("smollm2_135m_instruct"), args=args,
                      train_dataset=data)
    state = trainer.train()
    moments = {k: v.asnumpy() for k, v in built[-1].state_parameters().items()}
    losses = np.array([h["loss"] for h in state.log_history if "loss" in h])
    np.savez(os.path.join(out, f"world{size}_rank{rank}.npz"), losses=losses, **model.state_dict(),
             **{f"optimizer/{k}": v for k, v in moments.items()})


if __name__ == "__main__":
    main(*sys.argv[1:])
