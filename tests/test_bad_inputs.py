"""The bad-input matrix (issue 15, reliability): broken inputs of every kind a user can hand the public API.

Each case makes one bad input under ``tmp_path``, mostly from a good one (a tiny model saved with
``save_pretrained``, SmolLM2's tokenizer files, a LoRA adapter, a chat JSONL) with one thing broken, and
calls the API a user would call. It checks:

- the exception type: ``ValueError``, ``FileNotFoundError`` or the project's own (``CheckpointMismatchError``,
  ``NonFiniteWeightsError``, ``UnknownNameError``, a serving ``Status`` code), never a ``KeyError``,
  ``IndexError`` or ``TypeError`` from deep inside;
- the message: fragments naming what was expected and what was found (the field or tensor, the bad
  value or shape, the file and line);
- that nothing the user saved changed: every file under ``tmp_path`` has the same bytes after the call
  (this is the point of the cases that write: a Trainer's output directory, saving over a directory, an
  adapter conversion).

Cases are data: one list per category. ``python -m tests.test_bad_inputs`` prints the counts per category
(the README line; ``test_readme_counts`` keeps it in step).
"""
import json
import os
import shutil
import struct
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import pytest
import yaml

from mindformers.modeling_utils import CheckpointMismatchError, NonFiniteWeightsError
from mindformers.registry import UnknownNameError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------- the harness
@dataclass(frozen=True)
class Case:
    """One bad input.

    Attributes:
        id: the test id.
        run: ``run(tmp_path, good)`` builds the bad input under ``tmp_path`` and calls the API (``good``: the
            module's good inputs, see the ``good`` fixture).
        error: the exception type expected.
        fragments: substrings the message must contain.
    """

    id: str
    run: Callable[[Any, "Good"], Any]
    error: type
    fragments: Tuple[str, ...]


def snapshot(root) -> Dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes)."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def check_case(case: Case, tmp_path, good) -> None:
    """Run ``case``: the bad input is built first (the snapshot is taken when ``run`` asks for it through
    ``good.freeze``), then the call must raise ``case.error`` with every fragment, leaving the files as they were."""
    good.frozen = None
    with pytest.raises(BaseException) as info:  # BaseException: the command line's SystemExit too
        case.run(tmp_path, good)
    err = info.value
    message = str(err)
    assert isinstance(err, case.error), f"{case.id}: expected {case.error.__name__}, got {type(err).__name__}: {message}"
    missing = [f for f in case.fragments if f not in message]
    assert not missing, f"{case.id}: message lacks {missing}: {message}"
    assert good.frozen is not None, f"{case.id}: the case never called good.freeze() before the API call"
    after = snapshot(tmp_path)
    changed = sorted(k for k in set(good.frozen) | set(after) if good.frozen.get(k) != after.get(k))
    assert not changed, f"{case.id}: files changed, added or deleted by the failed call: {changed}"


# ------------------------------------------------------------------------------------------- good inputs
TINY = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=2)
CHATS = [{"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]}
         for i in range(3)]


@dataclass
class Good:
    """The good inputs every case starts from (made once per module) and helpers to copy and break them."""

    model_dir: str
    tokenizer_dir: str
    adapter_dir: str
    swift_dir: str
    tokenizer: Any
    frozen: Optional[Dict[str, bytes]] = None

    def freeze(self, tmp_path) -> None:
        """Record every file under ``tmp_path``: the bad input is ready, the API call comes next."""
        self.frozen = snapshot(tmp_path)

    def copy(self, which: str, tmp_path, name: Optional[str] = None) -> str:
        target = os.path.join(str(tmp_path), name or which)
        shutil.copytree(getattr(self, which), target)
        return target


def tiny_model(**overrides):
    from mindformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM.from_config(LlamaConfig(**{**TINY, **overrides}), seed=0)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    from mindformers import AutoTokenizer
    from mindformers.tuners import LoRAConfig, LoraConfig, Swift, get_peft_model

    root = tmp_path_factory.mktemp("good")
    model_dir, tokenizer_dir = str(root / "model"), str(root / "tokenizer")
    tiny_model().save_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained("smollm2_135m_instruct")
    tokenizer.save_pretrained(tokenizer_dir)
    adapter_dir, swift_dir = str(root / "adapter"), str(root / "swift")
    peft = get_peft_model(tiny_model(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]), seed=1)
    peft.save_pretrained(adapter_dir)
    swift = Swift.prepare_model(tiny_model(), {"first": LoRAConfig(r=2, target_modules=["q_proj"]),
                                               "second": LoRAConfig(r=2, target_modules=["v_proj"])}, seed=1)
    swift.save_pretrained(swift_dir)
    return Good(model_dir, tokenizer_dir, adapter_dir, swift_dir, tokenizer)


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_json(path, data):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


def write_text(path, text, mode="w"):
    with open(path, mode) as f:
        f.write(text)
    return str(path)


# ------------------------------------------------------------------------------------------- configs
def edited_config(tmp_path, good, **changes):
    """A copy of the good model directory whose config.json has ``changes`` (value None: key removed)."""
    directory = good.copy("model_dir", tmp_path, "model")
    path = os.path.join(directory, "config.json")
    data = read_json(path)
    for key, value in changes.items():
        data.pop(key, None) if value is None else data.__setitem__(key, value)
    write_json(path, data)
    good.freeze(tmp_path)
    return directory


def load_config(**changes):
    def run(tmp_path, good):
        from mindformers import AutoConfig

        return AutoConfig.from_pretrained(edited_config(tmp_path, good, **changes))
    return run


def load_model(**changes):
    def run(tmp_path, good):
        from mindformers import AutoModel

        return AutoModel.from_pretrained(edited_config(tmp_path, good, **changes))
    return run


def load_yaml_text(text, api="AutoConfig"):
    """Write ``text`` (a string, or data dumped as YAML) to run.yaml and read it with ``api``."""
    def run(tmp_path, good):
        from mindformers import AutoConfig, AutoModel, Trainer, TrainingArguments

        body = text if isinstance(text, str) else yaml.safe_dump(text)
        path = write_text(tmp_path / "run.yaml", body)
        good.freeze(tmp_path)
        if api == "AutoConfig":
            return AutoConfig.from_pretrained(path)
        if api == "AutoModel":
            return AutoModel.from_pretrained(path)
        if api == "TrainingArguments":
            return TrainingArguments.from_yaml(path)
        if api == "Trainer":
            return Trainer(args=path)
        import run_mindformer  # the repository root is on sys.path (pytest.ini)

        return run_mindformer.main(["--config", path, *api])
    return run


def yaml_model(arch="LlamaForCausalLM", **changes):
    model_config = {"model_type": "llama", **TINY, **changes}
    return {"model": {"arch": {"type": arch}, "model_config": model_config}}


def unknown_preset(tmp_path, good):
    from mindformers import AutoConfig

    good.freeze(tmp_path)
    return AutoConfig.from_pretrained("smollm3_3b")


def earlier_run(tmp_path, good):
    """An output_dir holding an earlier run's checkpoint and metrics (a new run must not replace them)."""
    out = tmp_path / "out"
    (out / "checkpoint-3").mkdir(parents=True)
    write_text(out / "checkpoint-3" / "model.safetensors", "the user's weights")
    write_text(out / "metrics.jsonl", '{"step": 3, "loss": 1.5}\n')
    return {}


def incomplete_checkpoint(tmp_path, good):
    """An output_dir whose only checkpoint lacks trainer_state.json and optimizer.safetensors."""
    good.copy("model_dir", tmp_path, os.path.join("out", "checkpoint-2"))
    return {}


def other_model_checkpoint(tmp_path, good):
    """finetune_checkpoint: the good tiny model (vocabulary 64), for the Trainer's model (vocabulary 49152)."""
    return {"finetune_checkpoint": good.copy("model_dir", tmp_path, "other")}


def trainer_run(prepare, call="train", **training):
    """A Trainer of a tiny Llama with SmolLM2's vocabulary on three chats, writing to tmp_path/out; ``prepare``
    puts the bad input in place and returns the arguments of ``call``."""
    def run(tmp_path, good):
        from mindformers import Trainer

        arguments = prepare(tmp_path, good)
        good.freeze(tmp_path)
        args = {"output_dir": str(tmp_path / "out"), "max_steps": 1, "batch_size": 1, "seq_length": 128,
                "disable_tqdm": True, **training}
        trainer = Trainer(model=tiny_model(vocab_size=49152), tokenizer=good.tokenizer, args=args, train_dataset=CHATS)
        return getattr(trainer, call)(**arguments)
    return run


CONFIG_CASES = [
    Case("unknown-key", load_config(hidden_sise=16), ValueError, ("config.json", "'hidden_sise'", "hidden_size")),
    Case("unknown-model-type", load_config(model_type="lama"), ValueError, ("config.json", "'lama'", "llama")),
    Case("string-for-int", load_config(intermediate_size="32"), ValueError,
         ("intermediate_size", "'32'", "an integer", "without quotes")),
    Case("string-for-float", load_config(rms_norm_eps="tiny"), ValueError, ("rms_norm_eps", "'tiny'", "a number")),
    Case("string-for-bool", load_config(tie_word_embeddings="yes"), ValueError,
         ("tie_word_embeddings", "'yes'", "true or false")),
    Case("float-for-int", load_config(num_hidden_layers=1.5), ValueError, ("num_hidden_layers", "1.5")),
    Case("heads-do-not-divide-hidden", load_config(hidden_size=18, head_dim=None), ValueError,
         ("hidden_size (18)", "num_attention_heads (4)", "head_dim")),
    Case("kv-heads-do-not-divide-heads", load_config(num_key_value_heads=3), ValueError,
         ("num_attention_heads (4)", "num_key_value_heads (3)")),
    Case("kv-heads-zero", load_config(num_key_value_heads=0), ValueError, ("num_key_value_heads", "0")),
    Case("negative-hidden-size", load_config(hidden_size=-16), ValueError, ("hidden_size", "-16")),
    Case("vocab-zero", load_config(vocab_size=0), ValueError, ("vocab_size", "positive", "0")),
    Case("layers-zero", load_config(num_hidden_layers=0), ValueError, ("num_hidden_layers", "0")),
    Case("intermediate-zero", load_config(intermediate_size=0), ValueError, ("intermediate_size", "0")),
    Case("context-zero", load_config(max_position_embeddings=0), ValueError, ("max_position_embeddings", "0")),
    Case("unknown-dtype", load_config(torch_dtype="float64", dtype="float64"), ValueError,
         ("config.json", "dtype", "'float64'", "float32")),
    Case("yaml-unknown-key", load_yaml_text(yaml_model(num_layer=2)), ValueError,
         ("run.yaml", "'num_layer'", "num_layers")),
    Case("yaml-string-for-int", load_yaml_text(yaml_model(num_attention_heads="four")), ValueError,
         ("run.yaml", "num_attention_heads", "'four'")),
    Case("yaml-not-a-mapping", load_yaml_text("- model\n- training\n"), ValueError, ("run.yaml", "mapping", "list")),
    Case("yaml-empty", load_yaml_text(""), ValueError, ("run.yaml", "empty")),
    Case("yaml-syntax-error", load_yaml_text("model:\n  model_config: {hidden_size: [16, 32}\n"), ValueError,
         ("run.yaml", "not valid YAML", "line 2")),
    Case("yaml-unknown-arch", load_yaml_text(yaml_model(arch="LlamaForCausalLMM"), "AutoModel"), UnknownNameError,
         ("'LlamaForCausalLMM'", "LlamaForCausalLM")),
    Case("unknown-preset", unknown_preset, UnknownNameError, ("'smollm3_3b'", "smollm2_135m_instruct")),
    Case("yaml-no-model-section", load_yaml_text({"training": {"max_steps": 1}}), ValueError, ("run.yaml", "model:")),
    Case("training-unknown-key", load_yaml_text({"training": {"lerning_rate": 1e-3}}, "TrainingArguments"), ValueError,
         ("run.yaml", "'lerning_rate'", "learning_rate")),
    Case("training-string-for-int", load_yaml_text({"training": {"max_steps": "ten"}}, "TrainingArguments"), ValueError,
         ("max_steps", "'ten'", "an integer")),
    Case("training-string-for-float", load_yaml_text({"training": {"learning_rate": "fast"}}, "TrainingArguments"),
         ValueError, ("learning_rate", "'fast'", "a number")),
    Case("training-negative-batch", load_yaml_text({"training": {"batch_size": -2}}, "TrainingArguments"), ValueError,
         ("batch_size", "-2")),
    Case("training-unknown-schedule", load_yaml_text({"training": {"lr_scheduler_type": "cosin"}}, "TrainingArguments"),
         ValueError, ("lr_scheduler_type", "'cosin'", "cosine")),
    Case("training-accumulation-zero", load_yaml_text({"training": {"gradient_accumulation_steps": 0}},
         "TrainingArguments"), ValueError, ("gradient_accumulation_steps", ">= 1", "0")),
    Case("training-unknown-report", load_yaml_text({"training": {"report_to": ["wandb"]}}, "TrainingArguments"),
         ValueError, ("report_to", "['wandb']", "tensorboard")),
    Case("training-warmup-ratio", load_yaml_text({"training": {"warmup_ratio": 1.5}}, "TrainingArguments"), ValueError,
         ("warmup_ratio", "1.5")),
    Case("run-unknown-section", load_yaml_text({**yaml_model(), "trainig": {}}, "Trainer"), ValueError,
         ("run.yaml", "'trainig'", "training")),
    Case("cli-yaml-syntax-error", load_yaml_text("training: [1,\n", ["--run_mode", "train"]), ValueError,
         ("run.yaml", "not valid YAML")),
    Case("cli-bad-override", load_yaml_text(yaml_model(), ["--run_mode", "train", "training.max_steps"]), SystemExit,
         ("training.max_steps", "section.key=value")),
    Case("output-dir-holds-earlier-run", trainer_run(earlier_run), FileExistsError,
         ("checkpoint-3", "metrics.jsonl", "overwrite_output_dir")),
]


# ------------------------------------------------------------------------------------------- datasets
def dataset(text=None, name="train.jsonl", **options):
    """Write ``text`` (str or bytes; None: no file) to ``name`` and build the dataset as the Trainer does."""
    def run(tmp_path, good):
        from mindformers.dataset import build_dataset

        path = tmp_path / name
        if text is not None:
            write_text(path, text, "wb" if isinstance(text, bytes) else "w")
        good.freeze(tmp_path)
        return build_dataset(str(path), good.tokenizer, seq_length=64, **options)
    return run


def jsonl(*records):
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def directory_dataset(tmp_path, good):
    from mindformers.dataset import build_dataset

    os.makedirs(tmp_path / "train.jsonl")
    good.freeze(tmp_path)
    return build_dataset(str(tmp_path / "train.jsonl"), good.tokenizer, seq_length=64)


DATASET_CASES = [
    Case("broken-line", dataset(jsonl(CHATS[0], '{"messages": [{"role": "user", "content": "Hi"', CHATS[1])), ValueError,
         ("train.jsonl:2", "invalid JSON")),
    Case("empty-file", dataset(""), ValueError, ("train.jsonl", "empty")),
    Case("blank-lines-only", dataset("\n  \n\n"), ValueError, ("train.jsonl", "empty")),
    Case("unknown-columns", dataset(jsonl({"prompt": "Hi", "answer": "Hello"})), ValueError,
         ("train.jsonl:1", "['answer', 'prompt']", "'messages'", "'text'")),
    Case("chat-without-messages", dataset(jsonl({"text": "Hi"}), data_format="chat"), ValueError,
         ("train.jsonl:1", "missing ['messages']", "found keys ['text']")),
    Case("alpaca-without-output", dataset(jsonl({"instruction": "Say hi"}), data_format="alpaca"), ValueError,
         ("train.jsonl:1", "missing ['output']", "found keys ['instruction']")),
    Case("chat-unknown-role", dataset(jsonl({"messages": [{"role": "robot", "content": "Hi"}]})), ValueError,
         ("train.jsonl:1", "'robot'", "assistant")),
    Case("chat-without-answer", dataset(jsonl({"messages": [{"role": "user", "content": "Hi"}]})), ValueError,
         ("train.jsonl:1", "no assistant message", "['user']")),
    Case("sharegpt-unknown-speaker", dataset(jsonl({"conversations": [{"from": "bot", "value": "Hi"}]})), ValueError,
         ("train.jsonl:1", "'bot'", "gpt")),
    Case("text-not-a-string", dataset(jsonl({"text": 5})), ValueError, ("train.jsonl:1", "'text'", "int 5")),
    Case("chat-content-not-text", dataset(jsonl({"messages": [{"role": "user", "content": 5},
                                                             {"role": "assistant", "content": "Hi"}]})), ValueError,
         ("train.jsonl:1", "content", "int 5")),
    Case("record-not-object", dataset(jsonl(CHATS[0], "[1, 2]")), ValueError, ("train.jsonl:2", "list")),
    Case("classification-label-not-int", dataset(jsonl({"text": "good", "label": "pos"}), task="text_classification"),
         ValueError, ("train.jsonl:1", "'pos'", "label")),
    Case("binary-junk", dataset(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\x00\x10"), ValueError,
         ("train.jsonl:1", "UTF-8", "0x89")),
    Case("json-object-not-array", dataset(json.dumps(CHATS[0]), name="train.json"), ValueError,
         ("train.json:1", "expected '['", ".jsonl")),
    Case("unsupported-suffix", dataset("messages,role\n", name="train.csv"), ValueError,
         ("train.csv", "'.csv'", ".jsonl")),
    Case("nonexistent-path", dataset(None), FileNotFoundError, ("train.jsonl", "no dataset file")),
    Case("directory-path", directory_dataset, IsADirectoryError, ("train.jsonl", "directory")),
]


# ------------------------------------------------------------------------------------------- checkpoints
def edited_weights(edit, api="AutoModel"):
    """A copy of the good model directory whose model.safetensors went through ``edit(state) -> state``."""
    def run(tmp_path, good):
        from safetensors.numpy import load_file, save_file
        from mindformers import AutoModel

        directory = good.copy("model_dir", tmp_path, "model")
        path = os.path.join(directory, "model.safetensors")
        save_file(edit(load_file(path)), path, metadata={"format": "pt"})
        good.freeze(tmp_path)
        if api == "AutoModel":
            return AutoModel.from_pretrained(directory)
        return tiny_model().load_state_dict(load_state_dict_of(directory))
    return run


def load_state_dict_of(directory):
    from mindformers.checkpoint import load_state_dict

    return load_state_dict(directory)


def edited_files(edit):
    """A copy of the good model directory changed by ``edit(directory)``, loaded with AutoModel."""
    def run(tmp_path, good):
        from mindformers import AutoModel

        directory = good.copy("model_dir", tmp_path, "model")
        edit(directory)
        good.freeze(tmp_path)
        return AutoModel.from_pretrained(directory)
    return run


def changed(name, make):
    def edit(state):
        state[name] = make(state[name])
        return state
    return edit


def with_value(value, at=(0, 0)):
    def make(array):
        array = array.copy()
        array[at] = value
        return array
    return make


def truncate(fraction):
    def edit(directory):
        path = os.path.join(directory, "model.safetensors")
        with open(path, "rb") as f:
            data = f.read()
        write_text(path, data[: int(len(data) * fraction)], "wb")
    return edit


def raw_safetensors(directory, tensors):
    """Write model.safetensors by hand (header + bytes), for dtypes numpy has no name for."""
    header, blob = {}, b""
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    text = json.dumps(header).encode()
    write_text(os.path.join(directory, "model.safetensors"), struct.pack("<Q", len(text)) + text + blob, "wb")


def fp8_weights(directory):
    from safetensors.numpy import load_file

    state = load_file(os.path.join(directory, "model.safetensors"))
    tensors = {k: ("F32", v.shape, v.astype(np.float32).tobytes()) for k, v in state.items()}
    shape = state["model.norm.weight"].shape
    tensors["model.norm.weight"] = ("F8_E4M3", shape, bytes(int(np.prod(shape))))
    raw_safetensors(directory, tensors)


def sharded_index_missing_shard(directory):
    os.remove(os.path.join(directory, "model.safetensors"))
    write_json(os.path.join(directory, "model.safetensors.index.json"),
               {"metadata": {}, "weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}})


def save_over(max_shard_size):
    """Saving over the user's model directory with a bad option: refused before anything is written."""
    def run(tmp_path, good):
        directory = good.copy("model_dir", tmp_path, "model")
        good.freeze(tmp_path)
        tiny_model(hidden_size=32).save_pretrained(directory, max_shard_size=max_shard_size)
    return run


def save_onto_file(tmp_path, good):
    path = write_text(tmp_path / "notes.txt", "the user's notes")
    good.freeze(tmp_path)
    tiny_model().save_pretrained(path)


Q = "model.layers.0.self_attn.q_proj.weight"
CHECKPOINT_CASES = [
    Case("truncated", edited_files(truncate(0.6)), ValueError, ("model.safetensors", "truncated")),
    Case("truncated-header", edited_files(truncate(0.001)), ValueError, ("model.safetensors", "not a valid safetensors")),
    Case("empty-file", edited_files(lambda d: write_text(os.path.join(d, "model.safetensors"), "")), ValueError,
         ("model.safetensors", "not a valid safetensors")),
    Case("git-lfs-pointer", edited_files(lambda d: write_text(os.path.join(d, "model.safetensors"),
         "version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")), ValueError,
         ("model.safetensors", "Git LFS pointer", "git lfs pull")),
    Case("not-safetensors", edited_files(lambda d: write_text(os.path.join(d, "model.safetensors"),
         '{"model.norm.weight": [1.0, 1.0]}')), ValueError, ("model.safetensors", "not a valid safetensors")),
    Case("wrong-shape", edited_weights(changed(Q, lambda a: a[:8])), CheckpointMismatchError, (Q, "(8, 16)", "(16, 16)")),
    Case("wrong-dtype-int32", edited_weights(changed(Q, lambda a: a.astype(np.int32))), CheckpointMismatchError,
         (Q, "int32", "float")),
    Case("unsupported-dtype-fp8", edited_files(fp8_weights), ValueError, ("model.norm.weight", "F8_E4M3")),
    Case("nan-values", edited_weights(changed(Q, with_value(np.nan, (3, 5)))), NonFiniteWeightsError,
         (Q, "1 NaN", "check_finite=False")),
    Case("inf-values", edited_weights(changed("model.norm.weight", with_value(np.inf, 2))), NonFiniteWeightsError,
         ("model.norm.weight", "Inf")),
    Case("nan-load-state-dict", edited_weights(changed(Q, with_value(np.nan)), api="load_state_dict"),
         NonFiniteWeightsError,
         (Q, "NaN")),
    Case("missing-tensor", edited_weights(lambda s: {k: v for k, v in s.items() if "down_proj" not in k}),
         CheckpointMismatchError,
         ("missing 1", "model.layers.0.mlp.down_proj.weight")),
    Case("unexpected-tensor", edited_weights(lambda s: {**s, "model.layers.7.mlp.up_proj.weight": s[Q]}),
         CheckpointMismatchError,
         ("unexpected 1", "model.layers.7.mlp.up_proj.weight")),
    Case("no-weights", edited_files(lambda d: os.remove(os.path.join(d, "model.safetensors"))), FileNotFoundError,
         ("model.safetensors", "model.safetensors.index.json", "config.json")),
    Case("index-missing-shard", edited_files(sharded_index_missing_shard), FileNotFoundError,
         ("model-00002-of-00002.safetensors", "model.safetensors.index.json")),
    Case("index-broken", edited_files(lambda d: (os.remove(os.path.join(d, "model.safetensors")),
                                                 write_text(os.path.join(d, "model.safetensors.index.json"), "{}"))),
         ValueError, ("model.safetensors.index.json", "'weight_map'", "found keys []")),
    Case("config-missing", edited_files(lambda d: os.remove(os.path.join(d, "config.json"))), FileNotFoundError,
         ("config.json", "model.safetensors")),
    Case("config-broken-json", edited_files(lambda d: write_text(os.path.join(d, "config.json"), '{"model_type": "lla')),
         ValueError, ("config.json", "not valid JSON")),
    Case("config-not-object", edited_files(lambda d: write_text(os.path.join(d, "config.json"), "[1, 2]")), ValueError,
         ("config.json", "JSON object", "list")),
    Case("config-for-another-size", edited_files(lambda d: write_json(
         os.path.join(d, "config.json"), {**read_json(os.path.join(d, "config.json")), "intermediate_size": 48})),
         CheckpointMismatchError, ("model.layers.0.mlp.up_proj.weight", "(32, 16)", "(48, 16)")),
    Case("finetune-checkpoint-of-another-model", trainer_run(other_model_checkpoint, "finetune"), CheckpointMismatchError,
         ("model.embed_tokens.weight", "checkpoint (64, 16) vs model (49152, 16)")),
    Case("resume-incomplete-checkpoint", trainer_run(incomplete_checkpoint, resume_from_checkpoint=True),
         FileNotFoundError, ("checkpoint-2", "trainer_state.json")),
    Case("save-bad-shard-size", save_over("5 gigs"), ValueError, ("max_shard_size", "'5 gigs'")),
    Case("save-onto-a-file", save_onto_file, NotADirectoryError, ("notes.txt", "is a file", "directory")),
]


# ------------------------------------------------------------------------------------------- tokenizers
def tokenizer_files(edit):
    """A copy of SmolLM2's saved tokenizer directory changed by ``edit(directory)``, loaded with AutoTokenizer."""
    def run(tmp_path, good):
        from mindformers import AutoTokenizer

        directory = good.copy("tokenizer_dir", tmp_path, "tokenizer")
        edit(directory)
        good.freeze(tmp_path)
        return AutoTokenizer.from_pretrained(directory)
    return run


def tokenizer_config(**changes):
    def edit(directory):
        path = os.path.join(directory, "tokenizer_config.json")
        write_json(path, {**read_json(path), **changes})
        if "chat_template" in changes:  # chat_template.jinja would take precedence
            os.remove(os.path.join(directory, "chat_template.jinja"))
    return edit


def replace_file(name, content):
    def edit(directory):
        write_text(os.path.join(directory, name), content, "wb" if isinstance(content, bytes) else "w")
    return edit


def keep_only(*names):
    def edit(directory):
        for name in os.listdir(directory):
            if name not in names:
                os.remove(os.path.join(directory, name))
    return edit


def missing_tokenizer_dir(tmp_path, good):
    from mindformers import AutoTokenizer

    good.freeze(tmp_path)
    return AutoTokenizer.from_pretrained(str(tmp_path / "no" / "such"))


def sentencepiece_junk(directory):
    keep_only("tokenizer_config.json")(directory)
    write_text(os.path.join(directory, "tokenizer.model"), b"\x00\x01junk, not a sentencepiece model", "wb")


BAD_TEMPLATE = "{% for message in messages %}{{ message['content'] }{% endfor %}"
TOKENIZER_CASES = [
    Case("broken-tokenizer-json", tokenizer_files(replace_file("tokenizer.json", '{"version": "1.0", "model": {')),
         ValueError, ("tokenizer.json",)),
    Case("tokenizer-json-not-a-tokenizer", tokenizer_files(replace_file("tokenizer.json", '{"vocab": []}')), ValueError,
         ("tokenizer.json", "tokenizers")),
    Case("no-tokenizer-files", tokenizer_files(keep_only("tokenizer_config.json")), FileNotFoundError,
         ("tokenizer.json", "vocab.json", "found ['tokenizer_config.json']")),
    Case("vocab-without-merges", tokenizer_files(lambda d: (keep_only()(d), write_json(os.path.join(d, "vocab.json"),
                                                                                        {"a": 0}))),
         FileNotFoundError, ("merges.txt", "found ['vocab.json']")),
    Case("nonexistent-directory", missing_tokenizer_dir, FileNotFoundError, ("no such", "no/such")),
    Case("config-broken-json", tokenizer_files(replace_file("tokenizer_config.json", '{"eos_token": ')), ValueError,
         ("tokenizer_config.json", "not valid JSON")),
    Case("config-not-object", tokenizer_files(replace_file("tokenizer_config.json", '"LlamaTokenizer"')), ValueError,
         ("tokenizer_config.json", "JSON object", "str")),
    Case("chat-template-syntax-error", tokenizer_files(tokenizer_config(chat_template=BAD_TEMPLATE)), ValueError,
         ("tokenizer_config.json", "chat template", "line 1")),
    Case("chat-template-file-syntax-error", tokenizer_files(replace_file("chat_template.jinja", BAD_TEMPLATE)),
         ValueError, ("chat_template.jinja", "chat template", "line 1")),
    Case("chat-template-not-text", tokenizer_files(tokenizer_config(chat_template=5)), ValueError,
         ("tokenizer_config.json", "chat_template", "int")),
    Case("special-token-not-text", tokenizer_files(lambda d: (tokenizer_config(eos_token=5)(d), os.remove(
         os.path.join(d, "special_tokens_map.json")))), ValueError,
         ("tokenizer_config.json", "eos_token", "5")),
    Case("added-token-at-wrong-id",
         tokenizer_files(tokenizer_config(added_tokens_decoder={"0": {"content": "<|im_start|>"}})),
         ValueError, ("tokenizer_config.json", "'<|im_start|>'", "id 0", "id 1")),
    Case("sentencepiece-junk", tokenizer_files(sentencepiece_junk), ValueError, ("tokenizer.model", "sentencepiece")),
]


# ------------------------------------------------------------------------------------------- adapters
def peft_load(edit=None, base=None):
    """A copy of the good LoRA adapter changed by ``edit(directory)``, loaded with PeftModel.from_pretrained;
    the base model must come out of the failed load without adapter layers."""
    def run(tmp_path, good):
        from mindformers.tuners import PeftModel

        directory = good.copy("adapter_dir", tmp_path, "adapter")
        if edit is not None:
            edit(directory)
        good.freeze(tmp_path)
        model = base() if base is not None else tiny_model()
        names = [n for n, _ in model.parameters_and_names()]
        try:
            return PeftModel.from_pretrained(model, directory)
        finally:
            assert [n for n, _ in model.parameters_and_names()] == names, "a failed load left adapter parameters"
    return run


def adapter_config(**changes):
    def edit(directory):
        path = os.path.join(directory, "adapter_config.json")
        write_json(path, {**read_json(path), **changes})
    return edit


def adapter_weights(edit_state):
    def edit(directory):
        from safetensors.numpy import load_file, save_file

        path = os.path.join(directory, "adapter_model.safetensors")
        save_file(edit_state(load_file(path)), path, metadata={"format": "pt"})
    return edit


def swift_load(edit=None, adapter_name=None):
    def run(tmp_path, good):
        from mindformers.tuners import Swift

        directory = good.copy("swift_dir", tmp_path, "swift")
        if edit is not None:
            edit(directory)
        good.freeze(tmp_path)
        return Swift.from_pretrained(tiny_model(), directory, adapter_name=adapter_name)
    return run


def swift_to_peft(tmp_path, good):
    """Converting a SWIFT folder whose second adapter is broken into a folder holding the user's adapter:
    refused before anything is written."""
    from mindformers.tuners import Swift

    directory = good.copy("swift_dir", tmp_path, "swift")
    write_text(os.path.join(directory, "second", "adapter_model.safetensors"), "not safetensors")
    out = good.copy("adapter_dir", tmp_path, "peft_out")
    os.makedirs(os.path.join(out, "first"))
    write_text(os.path.join(out, "first", "adapter_model.safetensors"), "the user's adapter")
    good.freeze(tmp_path)
    Swift.save_to_peft_format(directory, out)


A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
ADAPTER_CASES = [
    Case("config-missing", peft_load(lambda d: os.remove(os.path.join(d, "adapter_config.json"))), FileNotFoundError,
         ("adapter_config.json", "adapter_model.safetensors")),
    Case("config-broken-json", peft_load(replace_file("adapter_config.json", '{"peft_type": "LO')), ValueError,
         ("adapter_config.json", "not valid JSON")),
    Case("unknown-peft-type", peft_load(adapter_config(peft_type="LORRA")), ValueError, ("LORRA", "LORA")),
    Case("rank-zero", peft_load(adapter_config(r=0)), ValueError, ("adapter_config.json", "rank r", "0")),
    Case("rank-string", peft_load(adapter_config(r="2")), ValueError,
         ("adapter_config.json", "r must be an integer", "'2'")),
    Case("alpha-string", peft_load(adapter_config(lora_alpha="sixteen")), ValueError,
         ("adapter_config.json", "lora_alpha", "'sixteen'")),
    Case("dropout-out-of-range", peft_load(adapter_config(lora_dropout=1.5)), ValueError,
         ("adapter_config.json", "lora_dropout", "1.5")),
    Case("unknown-target-module", peft_load(adapter_config(target_modules=["qkv_proj"])), ValueError,
         ("['qkv_proj']", "q_proj")),
    Case("weights-missing", peft_load(lambda d: os.remove(os.path.join(d, "adapter_model.safetensors"))),
         FileNotFoundError, ("adapter_model.safetensors", "adapter_config.json")),
    Case("weights-truncated", peft_load(replace_file("adapter_model.safetensors", b"\x10\x00\x00\x00")), ValueError,
         ("adapter_model.safetensors", "not a valid safetensors")),
    Case("weights-for-another-base", peft_load(base=lambda: tiny_model(hidden_size=32)), ValueError,
         ("lora_A.weight", "file (2, 16) vs model (2, 32)")),
    Case("weights-of-another-rank", peft_load(adapter_config(r=4)), ValueError,
         ("lora_A.weight", "file (2, 16) vs model (4, 16)")),
    Case("weights-missing-tensor", peft_load(adapter_weights(lambda s: {k: v for k, v in s.items() if k != A})),
         ValueError, ("missing 1", A)),
    Case("weights-for-missing-layer", peft_load(adapter_weights(lambda s: {**s, A.replace("layers.0", "layers.5"): s[A]})),
         ValueError, ("unexpected 1", "layers.5")),
    Case("weights-nan", peft_load(adapter_weights(changed(A, with_value(np.nan))) ), ValueError, (A, "NaN")),
    Case("swift-unknown-adapter", swift_load(adapter_name="third"), ValueError, ("['third']", "['first', 'second']")),
    Case("swift-config-broken", swift_load(replace_file(os.path.join("second", "adapter_config.json"), "{")), ValueError,
         ("second", "adapter_config.json", "not valid JSON")),
    Case("swift-to-peft-broken-adapter", swift_to_peft, ValueError, ("second", "adapter_model.safetensors")),
    Case("pet-config-unknown-type", load_model(pet_config={"pet_type": "lorra"}), ValueError, ("'lorra'", "lora")),
]


# ------------------------------------------------------------------------------------------- requests
@dataclass(frozen=True)
class Request:
    """A bad serving request: the prompt (token ids or text), its settings, the status code and message fragments."""

    id: str
    prompt: Any
    settings: Optional[Dict[str, Any]]
    code: str
    fragments: Tuple[str, ...]
    model: str = "tiny"


REQUEST_CASES = [
    Request("unknown-setting", "Hi", {"max_tokens": 5}, "INVALID_REQUEST", ("'max_tokens'", "max_new_tokens")),
    Request("string-for-int", "Hi", {"max_new_tokens": "5"}, "INVALID_REQUEST", ("max_new_tokens", "'5'")),
    Request("string-for-bool", "Hi", {"do_sample": "yes"}, "INVALID_REQUEST", ("do_sample", "'yes'", "true or false")),
    Request("string-for-float", "Hi", {"temperature": "hot"}, "INVALID_REQUEST", ("temperature", "'hot'")),
    Request("negative-max-new-tokens", "Hi", {"max_new_tokens": -3}, "INVALID_REQUEST", ("max_new_tokens", "-3")),
    Request("negative-top-k", "Hi", {"top_k": -1}, "INVALID_REQUEST", ("top_k", "-1")),
    Request("zero-repetition-penalty", "Hi", {"repetition_penalty": 0}, "INVALID_REQUEST", ("repetition_penalty", "0")),
    Request("string-for-seed", "Hi", {"seed": "abc"}, "INVALID_REQUEST", ("seed", "'abc'")),
    Request("top-p-out-of-range", "Hi", {"top_p": 1.5}, "INVALID_REQUEST", ("top_p", "1.5")),
    Request("empty-stop-string", "Hi", {"stop_strings": [""]}, "INVALID_REQUEST", ("stop_strings", "['']")),
    Request("id-beyond-vocab", [1, 49152], None, "INVALID_REQUEST", ("[49152]", "[0, 49152)")),
    Request("negative-id", [-1, 5], None, "INVALID_REQUEST", ("[-1]", "vocabulary")),
    Request("ids-not-integers", ["Hi", "there"], None, "INVALID_REQUEST", ("must be integers", "str", "'Hi'", "1 more")),
    Request("empty-ids", [], None, "INVALID_REQUEST", ("empty",)),
    Request("empty-text", "", None, "INVALID_REQUEST", ("empty",)),
    Request("text-not-a-string", 42.0, None, "INVALID_REQUEST", ("string", "float")),
    Request("prompt-longer-than-max-length", list(range(3, 103)), None, "INVALID_REQUEST",
            ("100 tokens", "48 tokens", "max_length")),
    Request("new-tokens-beyond-max-length", "Hi", {"max_new_tokens": 500}, "INVALID_REQUEST", ("501 tokens", "48")),
    Request("unknown-adapter", "Hi", {"lora_name": "nope"}, "UNKNOWN_ADAPTER", ("'nope'", "known: []")),
    Request("unknown-model", "Hi", None, "UNKNOWN_MODEL", ("'other'", "['tiny']"), model="other"),
]


@pytest.fixture(scope="module")
def engine(tmp_path_factory, good):
    """The serving engine with a tiny Llama (SmolLM2's vocabulary and tokenizer), installed but not started:
    every case is refused before a request reaches the scheduler, so no graph is compiled."""
    from mindformers.serving import Engine, RuntimeConfigBuilder

    directory = str(tmp_path_factory.mktemp("served"))
    tiny_model(vocab_size=49152, max_position_embeddings=64).save_pretrained(directory)
    good.tokenizer.save_pretrained(directory)
    engine = Engine()
    engine.install_model(RuntimeConfigBuilder("tiny", model=directory).max_batch(2).max_length(48).lora_max_num(1)
                         .lora_max_rank(4).warmup(False).build())
    yield engine
    engine.uninstall_model("tiny")


# ------------------------------------------------------------------------------------------- the tests
CATEGORIES = {"configs": CONFIG_CASES, "datasets": DATASET_CASES, "checkpoints": CHECKPOINT_CASES,
              "tokenizers": TOKENIZER_CASES, "adapters": ADAPTER_CASES, "requests": REQUEST_CASES}


def matrix_counts() -> Dict[str, int]:
    """Cases per category, and the total."""
    counts = {name: len(cases) for name, cases in CATEGORIES.items()}
    return {**counts, "total": sum(counts.values())}


def counts_line() -> str:
    """The README's line."""
    counts = matrix_counts()
    parts = ", ".join(f"{counts[name]} {name}" for name in CATEGORIES)
    return f"{counts['total']} cases: {parts}"


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c.id for c in CONFIG_CASES])
def test_configs(case, tmp_path, good):
    check_case(case, tmp_path, good)


@pytest.mark.parametrize("case", DATASET_CASES, ids=[c.id for c in DATASET_CASES])
def test_datasets(case, tmp_path, good):
    check_case(case, tmp_path, good)


@pytest.mark.parametrize("case", CHECKPOINT_CASES, ids=[c.id for c in CHECKPOINT_CASES])
def test_checkpoints(case, tmp_path, good):
    check_case(case, tmp_path, good)


@pytest.mark.parametrize("case", TOKENIZER_CASES, ids=[c.id for c in TOKENIZER_CASES])
def test_tokenizers(case, tmp_path, good):
    check_case(case, tmp_path, good)


@pytest.mark.parametrize("case", ADAPTER_CASES, ids=[c.id for c in ADAPTER_CASES])
def test_adapters(case, tmp_path, good):
    check_case(case, tmp_path, good)


@pytest.mark.parametrize("case", REQUEST_CASES, ids=[c.id for c in REQUEST_CASES])
def test_requests(case, engine):
    from mindformers.serving import StatusCode

    start = engine.start_request_text if isinstance(case.prompt, (str, float)) else engine.start_request_ids
    status, handle, queue = start(case.model, case.prompt, case.settings)
    assert status.code is StatusCode[case.code], f"{case.id}: {status}"
    assert handle is None and queue is None
    missing = [f for f in case.fragments if f not in status.message]
    assert not missing, f"{case.id}: message lacks {missing}: {status.message}"
    assert engine.metrics("tiny")["waiting"] == 0  # nothing was queued


# ------------------------------------------------------------------------------------------- what the fixes allow
def test_yaml_exponents_are_numbers(tmp_path):
    """PyYAML alone reads ``1e-4`` as a string (YAML 1.1); run YAMLs and command-line overrides read a number."""
    import run_mindformer
    from mindformers import TrainingArguments

    path = write_text(tmp_path / "run.yaml", "training:\n  learning_rate: 1e-4\n  warmup_ratio: 5E-2\n")
    args = TrainingArguments.from_yaml(path)
    assert args.learning_rate == 1e-4 and args.warmup_ratio == 0.05
    config = {}
    run_mindformer.apply_override(config, "training.learning_rate=3e-5")
    assert config == {"training": {"learning_rate": 3e-5}}


def test_nonfinite_weights_load_when_asked(good):
    """``check_finite=False`` loads NaN weights as they are (to inspect a diverged run)."""
    from mindformers.checkpoint import load_state_dict

    state = load_state_dict(good.model_dir)
    state[Q] = with_value(np.nan, (3, 5))(state[Q])
    model = tiny_model()
    model.load_state_dict(state, check_finite=False)
    loaded = model.state_dict()[Q]
    assert np.isnan(loaded[3, 5]) and np.isnan(loaded).sum() == 1


def test_bfloat16_checkpoint_loads_as_float32(tmp_path, good):
    """transformers saves most models in bfloat16 (a float type numpy knows only through MindSpore): the dtype
    check lets it through and each value is widened to float32 exactly (a bfloat16 is the upper half of one)."""
    from safetensors.numpy import load_file
    from mindformers import AutoModel

    directory = good.copy("model_dir", tmp_path, "model")
    state = load_file(os.path.join(directory, "model.safetensors"))
    upper = {k: (v.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16) for k, v in state.items()}
    raw_safetensors(directory, {k: ("BF16", v.shape, v.tobytes()) for k, v in upper.items()})
    loaded = AutoModel.from_pretrained(directory).state_dict()
    for name, bits in upper.items():
        np.testing.assert_array_equal(loaded[name], (bits.astype(np.uint32) << 16).view(np.float32))
    assert np.all(np.abs(loaded[Q] - state[Q]) <= 2 ** -7 * np.abs(state[Q]))  # 7 mantissa bits kept


def test_readme_counts():
    """README's reliability line states the matrix's counts (run ``python -m tests.test_bad_inputs``)."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert counts_line() in readme, f"README should say: {counts_line()}"


if __name__ == "__main__":
    print(counts_line())
