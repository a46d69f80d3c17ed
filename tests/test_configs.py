"""Every YAML in configs/: its first line is the command that runs it, its sections and keys are valid, its
model config and tuner build, and (where its tokenizer ships offline) its tokenizer reads its datasets."""
import glob
import os

import pytest

from mindformers import AutoConfig, AutoTokenizer, Trainer, TrainingArguments, build_dataset
from mindformers.presets import load_yaml
from mindformers.trainer.trainer import RUN_SECTIONS
from mindformers.tuners import LoraConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*", "*.yaml")))
OFFLINE_PREFIXES = ("assets:", "package:")  # files from scripts/get_assets.py or an installed package


def tokenizer_ships_offline(run) -> bool:
    """Whether every file the run's tokenizer section names ships offline (not a /path/to/... to fill in)."""
    section = (run.get("processor") or {}).get("tokenizer") or {}
    files = [section[key] for key in ("path", "tokenizer_file", "vocab_file", "merges_file") if key in section]
    return bool(files) and all(str(f).startswith(OFFLINE_PREFIXES) for f in files)


def test_every_preset_has_a_run_config():
    families = {os.path.basename(os.path.dirname(p)) for p in CONFIGS}
    for family in families:
        modes = {os.path.basename(p).split("_")[0] for p in CONFIGS if f"/{family}/" in p}
        assert "predict" in modes and modes & {"train", "finetune"}, (family, modes)


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.relpath(p, REPO) for p in CONFIGS])
def test_config(path, tmp_path):
    relative = os.path.relpath(path, REPO)
    with open(path, encoding="utf-8") as f:
        first = f.readline()
    assert first.startswith("# ") and (relative in first or "from_pretrained" in first), first
    run = load_yaml(path)
    assert set(run) <= set(RUN_SECTIONS), sorted(set(run) - set(RUN_SECTIONS))
    config = AutoConfig.from_pretrained(path)
    assert config.num_hidden_layers > 0
    pet = run["model"]["model_config"].get("pet_config")
    if pet:
        assert LoraConfig.from_pet_config(pet).r > 0
    if "training" not in run:
        return
    args = TrainingArguments.from_dict(run["training"], path)
    assert args.output_dir.startswith("output/")
    trainer = Trainer(args=path)  # sections checked, nothing loaded yet
    assert trainer.args == args and trainer.task == run.get("task", "text_generation")
    if not tokenizer_ships_offline(run):
        return
    tokenizer = AutoTokenizer.from_pretrained(path)
    for split in ("train_dataset", "eval_dataset"):
        options = dict(run[split])
        source = options.pop("path")
        assert source.startswith("output/chatterbot/"), source
        sample = tmp_path / os.path.basename(source)
        sample.write_text(SAMPLES[os.path.splitext(source)[1]], encoding="utf-8")
        data = build_dataset(str(sample), tokenizer, seq_length=args.seq_length, **options)
        assert data.num_label_tokens > 0


SAMPLES = {  # two records in the shape scripts/prepare_chatterbot.py writes
    ".jsonl": '{"messages": [{"role": "user", "content": "What is AI?"}, {"role": "assistant", "content": '
              '"The study of thinking machines."}]}\n{"messages": [{"role": "user", "content": "Are you sentient?"}, '
              '{"role": "assistant", "content": "Sort of."}]}\n',
    ".txt": "What is AI?\nThe study of thinking machines.\n\nAre you sentient?\nSort of.\n",
}
