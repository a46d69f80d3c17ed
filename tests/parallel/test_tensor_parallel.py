"""Tensor parallelism on CPU under msrun (explicit collectives, mindformers/parallel/tensor_parallel.py):

- every family split over 2 workers gives the whole model's loss and, slice by slice, its gradients;
- the Trainer with LoRA and model_parallel=2 on 2 workers, and full fine-tuning with data_parallel=2 x
  model_parallel=2 on 4, logs the losses of one process training on the same global batch, evaluates the
  same, and saves whole tensors (the checkpoint equals the one process's).

Full fine-tuning uses SGD as tests/trainer/test_data_parallel.py does (its update is linear in the gradient);
LoRA uses AdamW, so its saved moments are compared too."""
import json
import os

import numpy as np
import pytest

from mindformers.checkpoint.safetensors_dir import load_state_dict
from tests.trainer.conftest import REPO, chats, small_chats  # noqa: F401  (fixtures)
from tests.trainer.test_data_parallel import run_msrun

WORKER = os.path.join(REPO, "tests", "parallel", "tp_worker.py")
STEPS = 3


@pytest.fixture(scope="module")
def runs(small_chats, tmp_path_factory):
    out = tmp_path_factory.mktemp("tp")
    data = small_chats[0]
    run_msrun(WORKER, 2, ["families", str(out)], out / "logs_families")
    # model_parallel alone with LoRA, and with data_parallel for full fine-tuning (one msrun launch each)
    for kind, dp, mp in (("full", 1, 1), ("full", 2, 2), ("lora", 1, 1), ("lora", 1, 2)):
        run_msrun(WORKER, dp * mp if dp * mp > 1 else 0, ["train", str(out), data, kind, str(dp), str(mp), str(STEPS)],
                  out / f"logs_{kind}_dp{dp}_mp{mp}")
    return out


def _read(path):
    with open(path) as f:
        return json.load(f)


def test_every_family_splits_with_equal_loss_and_gradients(runs):
    ranks = [_read(runs / f"families_rank{r}.json") for r in range(2)]
    assert set(ranks[0]) == {"families/qwen3", "families/mistral", "families/mixtral", "families/qwen3_moe",
                             "interop/gpt2/base", "interop/llama/base", "interop/gpt2/base lora",
                             "interop/llama/base lora"}
    for rank in ranks:
        for family, r in rank.items():
            assert r["split_modules"] >= 4, family  # q/k/v/o and the MLP of every layer, at least
            if family.endswith("lora"):  # only the adapters train
                assert r["gradients"] == r["lora_gradients"] >= 18, (family, r)
            assert abs(r["loss"] - r["tp_loss"]) < 1e-5, (family, r)
            assert r["grad_diff"] < 1e-5, (family, r)
            assert r["gathered_diff"] == 0.0, (family, r)  # gathering the slices gives the weights back


@pytest.mark.parametrize("kind, dp, mp", [("full", 2, 2), ("lora", 1, 2)])
def test_trainer_equals_one_process(runs, kind, dp, mp):
    single = _read(runs / f"{kind}_dp1_mp1_rank0.json")
    assert len(single["losses"]) == STEPS
    for rank in range(dp * mp):
        run = _read(runs / f"{kind}_dp{dp}_mp{mp}_rank{rank}.json")
        assert run["size"] == dp * mp
        assert run["q_proj"] == [single["q_proj"][0] // 2, single["q_proj"][1]]  # each rank holds half the heads
        np.testing.assert_allclose(run["losses"], single["losses"], rtol=1e-5)
        np.testing.assert_allclose(run["eval_loss"], single["eval_loss"], rtol=1e-5)
        # resumed from the checkpoint (whole tensors, sliced again on load): the next step's loss
        np.testing.assert_allclose(run["resumed_loss"], single["resumed_loss"], rtol=1e-5)
    # rank 0 saved whole tensors gathered from its group: the one process's
    # (AdamW moments for LoRA; SGD keeps none)
    names = ["adapter_model.safetensors", "optimizer.safetensors"] if kind == "lora" else ["model.safetensors"]
    for name in names:
        saved = load_state_dict(os.path.join(runs, f"{kind}_dp{dp}_mp{mp}", f"checkpoint-{STEPS}", name))
        reference = load_state_dict(os.path.join(runs, f"{kind}_dp1_mp1", f"checkpoint-{STEPS}", name))
        assert set(saved) == set(reference) and reference, name
        for key, value in reference.items():
            np.testing.assert_allclose(saved[key], value, rtol=1e-4, atol=2e-6, err_msg=f"{name}: {key}")
