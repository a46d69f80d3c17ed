"""PEFT's task models (PeftModelForSequenceClassification / TokenClassification / QuestionAnswering /
FeatureExtraction, chosen by task_type) on Llama's task heads.

tests/fixtures/peft_tasks/make_reference.py made, with PEFT 0.21: LoRA adapters (+ the head in modules_to_save) for
the four tasks and prompt-tuning adapters for SEQ_CLS and TOKEN_CLS, with PEFT's outputs; and PEFT's outputs on the
adapters we saved (ours/). Here: our outputs on both equal PEFT's, files round-trip, the class and the head follow
the task_type, a LoRA classifier trains through the Trainer, and bad input is named.
"""
import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from mindformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification, LlamaForCausalLM
from mindformers.tuners import (
    AutoPeftModelForCausalLM,
    AutoPeftModelForFeatureExtraction,
    AutoPeftModelForQuestionAnswering,
    AutoPeftModelForSequenceClassification,
    AutoPeftModelForTokenClassification,
    LoraConfig,
    PeftModel,
    PeftModelForCausalLM,
    PeftModelForFeatureExtraction,
    PeftModelForQuestionAnswering,
    PeftModelForSequenceClassification,
    PeftModelForTokenClassification,
    PromptTuningConfig,
    get_peft_model,
)
from tests.conftest import FIXTURES, HF_MODELS, INTEROP, ids_tensor

TASKS = os.path.join(FIXTURES, "peft_tasks")
ATOL = 1e-4
# case -> (AutoPeftModel class, PEFT model class, output names in the reference)
CASES = {
    "seq_cls": (AutoPeftModelForSequenceClassification, PeftModelForSequenceClassification, ("loss", "logits")),
    "token_cls": (AutoPeftModelForTokenClassification, PeftModelForTokenClassification, ("loss", "logits")),
    "question_ans": (AutoPeftModelForQuestionAnswering, PeftModelForQuestionAnswering,
                     ("loss", "start_logits", "end_logits")),
    "feature_extraction": (AutoPeftModelForFeatureExtraction, PeftModelForFeatureExtraction, ("last_hidden_state",)),
    "seq_cls_prompt": (AutoPeftModelForSequenceClassification, PeftModelForSequenceClassification, ("loss", "logits")),
    "token_cls_prompt": (AutoPeftModelForTokenClassification, PeftModelForTokenClassification, ("loss", "logits")),
}


@pytest.fixture(scope="module")
def tok():
    """SmolLM2's tokenizer (the Trainer tests' tokenizer)."""
    from mindformers import AutoTokenizer

    return AutoTokenizer.from_pretrained("smollm2_135m_instruct")


def run(model, ref, names):
    """The model's outputs on the reference inputs, by the reference's names (targets given when recorded)."""
    args = [ids_tensor(ref["input_ids"]), ids_tensor(ref["attention_mask"])]
    args.append(ids_tensor(ref["position_ids"]) if "position_ids" in ref else None)
    targets = [ids_tensor(ref[k]) for k in ("labels", "start_positions", "end_positions") if k in ref]
    out = model(*args, *targets) if "loss" in names else model(*args)
    out = out if isinstance(out, tuple) else (out,)
    return {name: value.asnumpy() for name, value in zip(names, out)}


def assert_outputs_equal(ours, ref, suffix=""):
    for name, value in ours.items():
        if name == "loss":
            assert abs(float(value) - float(ref["loss" + suffix])) < 1e-5, (name, float(value), float(ref["loss" + suffix]))
        else:
            np.testing.assert_allclose(value, ref[name + suffix], atol=ATOL, rtol=0, err_msg=name + suffix)


def assert_same_tensors(directory, reference_dir):
    ours, theirs = load_file(os.path.join(directory, "adapter_model.safetensors")), \
        load_file(os.path.join(reference_dir, "adapter_model.safetensors"))
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


@pytest.mark.parametrize("case", list(CASES))
def test_peft_task_adapters_give_peft_outputs(case, tmp_path):
    auto, peft_class, names = CASES[case]
    directory = os.path.join(TASKS, case)
    ref = np.load(os.path.join(directory, "reference.npz"))
    model = auto.from_pretrained(directory)  # base from base_model_name_or_path, relative to the folder
    assert type(model) is peft_class
    assert_outputs_equal(run(model, ref, names), ref)
    if "logits_disabled" in ref or "last_hidden_state_disabled" in ref:  # LoRA: the base model and its own head
        with model.disable_adapter():
            assert_outputs_equal(run(model, ref, names), ref, "_disabled")
    model.save_pretrained(str(tmp_path))
    assert_same_tensors(str(tmp_path), directory)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["task_type"] == json.loads(open(os.path.join(directory, "adapter_config.json")).read())["task_type"]


@pytest.mark.parametrize("case", ["seq_cls", "token_cls", "question_ans", "feature_extraction", "seq_cls_prompt"])
def test_what_we_save_loads_in_peft_with_equal_outputs(case, tmp_path):
    _, peft_class, names = CASES[case]
    directory = os.path.join(TASKS, "ours", case)
    ref = np.load(os.path.join(directory, "peft_outputs.npz"))  # PEFT's outputs after loading our folder
    model = PeftModel.from_pretrained(_base_for(case), directory)  # the class follows the file's task_type
    assert type(model) is peft_class
    assert_outputs_equal(run(model, ref, names), ref)
    model.save_pretrained(str(tmp_path))
    assert_same_tensors(str(tmp_path), directory)


def _base_for(case):
    from mindformers.auto import auto_model_for_task

    folder = {"seq_cls": "llama_seqcls", "token_cls": "llama_tokcls", "question_ans": "llama_qa",
              "feature_extraction": "llama_bare", "seq_cls_prompt": "llama_seqcls"}[case]
    return auto_model_for_task(CASES[case][1].model_task).from_pretrained(os.path.join(HF_MODELS, folder))


def test_task_type_picks_the_class_and_trains_the_head():
    base = AutoModelForSequenceClassification.from_pretrained(os.path.join(HF_MODELS, "llama_seqcls"))
    config = LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules="all-linear")
    model = get_peft_model(base, config, seed=0)
    assert type(model) is PeftModelForSequenceClassification and model.cls_layer_name == "score"
    assert config.modules_to_save is None  # the caller's config is untouched
    assert model.peft_config["default"].modules_to_save == ["classifier", "score"]  # as PEFT writes it
    trainable = {p for p, param in model.base_model.parameters_and_names() if param.requires_grad}
    assert "score.modules_to_save.default.weight" in trainable  # the head trains in full...
    assert not any("score.lora" in p for p in trainable)  # ...and all-linear leaves it to modules_to_save
    assert all(".lora_" in p or p == "score.modules_to_save.default.weight" for p in trainable)
    # at initialisation (B = 0, the head's copy equals the head) the adapted classifier is the base classifier
    ids = ids_tensor(np.load(os.path.join(HF_MODELS, "llama_seqcls", "reference.npz"))["input_ids"])
    with model.disable_adapter():
        plain = model(ids).asnumpy()
    np.testing.assert_allclose(model(ids).asnumpy(), plain, atol=1e-6, rtol=0)

    qa = get_peft_model(AutoModelForQuestionAnswering.from_pretrained(os.path.join(HF_MODELS, "llama_qa")),
                        LoraConfig(task_type="QUESTION_ANS", target_modules=["q_proj"], modules_to_save=["norm"]))
    assert type(qa) is PeftModelForQuestionAnswering and qa.cls_layer_name == "qa_outputs"
    assert qa.peft_config["default"].modules_to_save == ["norm", "qa_outputs"]
    causal = LlamaForCausalLM.from_pretrained(os.path.join(INTEROP, "llama", "base"))
    assert type(get_peft_model(causal, LoraConfig(target_modules=["q_proj"]))) is PeftModelForCausalLM  # the default
    untyped = get_peft_model(LlamaForCausalLM.from_pretrained(os.path.join(INTEROP, "llama", "base")),
                             LoraConfig(task_type=None, target_modules=["q_proj"]))
    assert type(untyped) is PeftModel  # no task_type: PEFT's plain PeftModel


def test_prompt_tuning_classifier_prepends_virtual_tokens_and_trains_the_head():
    base = AutoModelForSequenceClassification.from_pretrained(os.path.join(HF_MODELS, "llama_seqcls"))
    model = get_peft_model(base, PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=3), seed=0)
    assert base.virtual_tokens == 3
    trainable = sorted(p for p, param in model.base_model.parameters_and_names() if param.requires_grad)
    assert trainable == ["model.embed_tokens.prompt_embeddings.default.weight", "score.modules_to_save.default.weight"]
    assert sorted(model.adapter_weights("default", peft_keys=True)) == ["base_model.score.weight", "prompt_embeddings"]
    ids = ids_tensor(np.load(os.path.join(HF_MODELS, "llama_seqcls", "reference.npz"))["input_ids"][[0, 2]])
    with_prompt = model(ids).asnumpy()
    with model.disable_adapter():
        plain = model(ids).asnumpy()
    assert with_prompt.shape == plain.shape == (2, 3) and np.abs(with_prompt - plain).max() > 1e-3


def test_bad_task_input_is_named(tmp_path):
    causal = LlamaForCausalLM.from_pretrained(os.path.join(INTEROP, "llama", "base"))
    with pytest.raises(ValueError, match=r"invalid task_type 'SEQ_CLASSIFICATION'; must be one of \['CAUSAL_LM'"):
        get_peft_model(causal, LoraConfig(task_type="SEQ_CLASSIFICATION", target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="task_type 'QUESTION_ANS' .* needs a question_answering model .* found "
                                         "LlamaForCausalLM, a causal_lm model.*'CAUSAL_LM'"):
        get_peft_model(causal, LoraConfig(task_type="QUESTION_ANS", target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="SEQ_2_SEQ_LM' needs an encoder-decoder model"):
        get_peft_model(causal, LoraConfig(task_type="SEQ_2_SEQ_LM", target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="task_type 'SEQ_CLS' .* found LlamaForCausalLM"):  # a SEQ_CLS file on a causal LM
        PeftModel.from_pretrained(causal, os.path.join(TASKS, "seq_cls"))
    with pytest.raises(ValueError, match="expected target PEFT class PeftModelForSequenceClassification .* "
                                         "AutoPeftModelForCausalLM loads PeftModelForCausalLM"):
        AutoPeftModelForCausalLM.from_pretrained(os.path.join(TASKS, "seq_cls"))
    config = json.loads(open(os.path.join(TASKS, "seq_cls", "adapter_config.json")).read())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "task_type": "TEXT_CLS"}))
    (tmp_path / "adapter_model.safetensors").write_bytes(
        open(os.path.join(TASKS, "seq_cls", "adapter_model.safetensors"), "rb").read())
    with pytest.raises(ValueError, match="invalid task_type 'TEXT_CLS'"):
        PeftModel.from_pretrained(causal, str(tmp_path))


def test_sequence_classification_lora_trains_through_the_trainer(tmp_path, tok):
    from mindformers import Trainer, TrainingArguments
    from tests.trainer.conftest import tiny_classifier, write_jsonl

    words = {"positive": ["great", "good", "lovely", "happy"], "negative": ["awful", "bad", "sad", "terrible"]}
    rng = np.random.default_rng(0)
    records = [{"text": f"the day was {rng.choice(words[label])} today", "label": label}
               for label in rng.choice(["negative", "positive"], 64)]
    base = tiny_classifier()
    base.config.id2label = {0: "negative", 1: "positive"}
    model = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
                           seed=0)
    score_before = base.score.weight.asnumpy().copy()
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=16, batch_size=8, seq_length=16,
                             learning_rate=3e-2, warmup_steps=0, logging_steps=4, save_steps=16, disable_tqdm=True,
                             report_to=[])
    trainer = Trainer(task="text_classification", model=model, tokenizer=tok, args=args,
                      train_dataset=write_jsonl(tmp_path / "train.jsonl", records[:48]),
                      eval_dataset=write_jsonl(tmp_path / "eval.jsonl", records[48:]))
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_loss"] < before["eval_loss"] - 0.1 and after["eval_accuracy"] > before["eval_accuracy"]
    np.testing.assert_array_equal(base.score.weight.asnumpy(), score_before)  # the base head stays; its copy trains
    saved = load_file(str(tmp_path / "out" / "checkpoint-16" / "adapter_model.safetensors"))
    assert "base_model.model.score.weight" in saved
    assert np.abs(saved["base_model.model.score.weight"] - score_before).max() > 1e-3


def test_prompt_tuning_span_positions_count_from_the_input():
    """QUESTION_ANS with a prompt: logits cover the virtual positions (as PEFT returns them) and the given spans,
    in the input's coordinates, are scored n positions later (PEFT passes them unchanged, i.e. into the prompt)."""
    base = AutoModelForQuestionAnswering.from_pretrained(os.path.join(HF_MODELS, "llama_qa"))
    model = get_peft_model(base, PromptTuningConfig(task_type="QUESTION_ANS", num_virtual_tokens=3), seed=1)
    ref = np.load(os.path.join(HF_MODELS, "llama_qa", "reference.npz"))
    ids, start, end = ref["input_ids"][[0, 2]], np.array([3, 11]), np.array([7, 30])  # 30: outside, ignored
    loss, start_logits, end_logits = (t.asnumpy() for t in model(ids_tensor(ids), None, None, ids_tensor(start),
                                                                 ids_tensor(end)))
    assert start_logits.shape == end_logits.shape == (2, 3 + 12)

    def ce(z, positions):
        positions = np.clip(positions + 3, 0, 15)
        logp = z - z.max(-1, keepdims=True) - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True))
        keep = positions != 15
        return -logp[np.arange(2)[keep], positions[keep]].mean()

    assert abs(float(loss) - (ce(start_logits.astype(np.float64), start) + ce(end_logits.astype(np.float64), end)) / 2) < 1e-5
