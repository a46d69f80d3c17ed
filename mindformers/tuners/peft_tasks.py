"""PEFT's task models, chosen by a config's ``task_type`` as ``get_peft_model`` and ``PeftModel.from_pretrained``
choose them (PEFT's ``MODEL_TYPE_TO_PEFT_MODEL_MAPPING``):

| task_type | class | base model (``model.task``) | head added to ``modules_to_save`` |
|---|---|---|---|
| ``CAUSAL_LM`` | :class:`PeftModelForCausalLM` | ``causal_lm`` | none |
| ``SEQ_CLS`` | :class:`PeftModelForSequenceClassification` | ``sequence_classification`` | ``classifier``, ``score`` |
| ``TOKEN_CLS`` | :class:`PeftModelForTokenClassification` | ``token_classification`` | ``classifier``, ``score`` |
| ``QUESTION_ANS`` | :class:`PeftModelForQuestionAnswering` | ``question_answering`` | ``qa_outputs`` |
| ``FEATURE_EXTRACTION`` | :class:`PeftModelForFeatureExtraction` | ``feature_extraction`` (the bare model) | none |

The head is trained in full beside the adapter (a copy per adapter, :mod:`.modules_to_save`) and saved by PEFT as
``base_model.model.<head>.<param>`` (``base_model.model.score.weight``); PEFT lists both ``classifier`` and
``score`` for every classifier, and the ones the model has are wrapped. Prompt-learning adapters put their
virtual tokens before the input of every task model (the model's ``virtual_tokens``); outputs cover them as
PEFT's do (see the model heads in ``models/common/decoder.py``).

A ``task_type`` of None gives a plain :class:`~.peft.PeftModel`, as in PEFT. Unlike PEFT, the base model must be
of the task the adapter is for (a span head cannot be put on a causal LM), and the head names are added once
(PEFT appends them again at every load).
"""
import copy
import os
from typing import Any, ClassVar, Dict, Optional, Tuple

from mindspore import nn

from .config import TunerConfig
from .peft import DEFAULT_ADAPTER, PeftModel, _parents, config_from_dir

CLASSIFIER_MODULES = ("classifier", "score")  # PEFT's names of a classifier's head
QA_MODULES = ("qa_outputs",)


class TaskPeftModel(PeftModel):
    """A :class:`PeftModel` for one task: checks the base model is of that task and trains its head with every
    adapter (``head_modules`` added to the config's ``modules_to_save``, as PEFT's task classes do)."""

    task_type: ClassVar[str] = ""
    model_task: ClassVar[str] = ""  # ``task`` of the models this class wraps
    model_hint: ClassVar[str] = ""  # how to get such a model, for the error message
    head_modules: ClassVar[Tuple[str, ...]] = ()

    def __init__(self, model: nn.Cell, configs: Dict[str, TunerConfig], seed: Optional[int] = None):
        found = getattr(model, "task", None)
        if found != self.model_task:
            raise ValueError(
                f"task_type {self.task_type!r} ({type(self).__name__}) needs a {self.model_task} model "
                f"({self.model_hint}); found {type(model).__name__}, a {found or 'task-less'} model. Set the "
                f"config's task_type to the model's task ({_task_type_of(found)}) or load the model for this task")
        super().__init__(model, configs, seed)
        names = {name for name, _ in model.name_cells().items()}
        self.cls_layer_name = next((m for m in self.head_modules if m in names), None)

    def add_adapter(self, name: str, config: TunerConfig, seed: Optional[int] = None) -> None:
        super().add_adapter(name, self.with_head(config), seed)

    def with_head(self, config: TunerConfig) -> TunerConfig:
        """``config`` with the task's head modules in ``modules_to_save`` (a copy; None becomes the head list)."""
        if not self.head_modules or not hasattr(config, "modules_to_save"):
            return config
        current = list(config.modules_to_save or [])
        missing = [m for m in self.head_modules if m not in current]
        if not missing:
            return config
        config = copy.copy(config)  # the caller's config is left as it was (PEFT extends it in place)
        config.modules_to_save = current + missing
        return config


class PeftModelForCausalLM(TaskPeftModel):
    """Adapters on a causal LM: ``model(input_ids, attention_mask, position_ids, labels)`` gives logits, or
    ``(loss, logits)``; ``generate`` runs through the active adapters."""

    task_type = "CAUSAL_LM"
    model_task = "causal_lm"
    model_hint = "AutoModelForCausalLM, LlamaForCausalLM"


class PeftModelForSequenceClassification(TaskPeftModel):
    """Adapters on a sequence classifier; its ``score`` head trains with each adapter."""

    task_type = "SEQ_CLS"
    model_task = "sequence_classification"
    model_hint = "AutoModelForSequenceClassification, LlamaForSequenceClassification"
    head_modules = CLASSIFIER_MODULES

    def construct(self, input_ids, attention_mask=None, position_ids=None, labels=None):
        """Logits [batch, num_labels], or ``(loss, logits)`` with ``labels`` [batch]."""
        return self.base_model(input_ids, attention_mask, position_ids, labels)


class PeftModelForTokenClassification(TaskPeftModel):
    """Adapters on a token classifier; its ``score`` head trains with each adapter."""

    task_type = "TOKEN_CLS"
    model_task = "token_classification"
    model_hint = "AutoModelForTokenClassification, LlamaForTokenClassification"
    head_modules = CLASSIFIER_MODULES

    def construct(self, input_ids, attention_mask=None, position_ids=None, labels=None):
        """Logits [batch, seq, num_labels] (a prompt's virtual positions first), or ``(loss, logits)`` with
        ``labels`` [batch, seq] (-100: ignored)."""
        return self.base_model(input_ids, attention_mask, position_ids, labels)


class PeftModelForQuestionAnswering(TaskPeftModel):
    """Adapters on an extractive question-answering model; its ``qa_outputs`` head trains with each adapter."""

    task_type = "QUESTION_ANS"
    model_task = "question_answering"
    model_hint = "AutoModelForQuestionAnswering, LlamaForQuestionAnswering"
    head_modules = QA_MODULES

    def construct(self, input_ids, attention_mask=None, position_ids=None, start_positions=None,
                  end_positions=None):
        """``(start_logits, end_logits)`` [batch, seq], or ``(loss, start_logits, end_logits)`` with both
        position tensors [batch]."""
        return self.base_model(input_ids, attention_mask, position_ids, start_positions, end_positions)


class PeftModelForFeatureExtraction(TaskPeftModel):
    """Adapters on the bare model: ``model(input_ids, attention_mask)`` gives the last hidden states."""

    task_type = "FEATURE_EXTRACTION"
    model_task = "feature_extraction"
    model_hint = "AutoModelForFeatureExtraction, LlamaModel"

    def construct(self, input_ids, attention_mask=None, position_ids=None):
        """Final hidden states [batch, seq, hidden]."""
        return self.base_model(input_ids, attention_mask, position_ids)


TASK_MODELS = {cls.task_type: cls for cls in (PeftModelForCausalLM, PeftModelForSequenceClassification,
                                              PeftModelForTokenClassification, PeftModelForQuestionAnswering,
                                              PeftModelForFeatureExtraction)}


def _task_type_of(model_task: Optional[str]) -> str:
    names = [repr(t) for t, cls in TASK_MODELS.items() if cls.model_task == model_task]
    return names[0] if names else "none fits"


def peft_model_class(task_type: Optional[str]) -> type:
    """The PEFT model class of ``task_type`` (None: :class:`PeftModel`); unknown types are refused by name."""
    if task_type is None:
        return PeftModel
    if task_type == "SEQ_2_SEQ_LM":
        raise ValueError("task_type 'SEQ_2_SEQ_LM' needs an encoder-decoder model, which this package does not "
                         f"have; supported task types: {sorted(TASK_MODELS)} or None")
    if task_type not in TASK_MODELS:
        raise ValueError(f"invalid task_type {task_type!r}; must be one of {sorted(TASK_MODELS)} or None "
                         "(PEFT's TaskType)")
    return TASK_MODELS[task_type]


class _AutoPeftModel:
    """Load an adapter directory together with the base model its config names (PEFT's ``AutoPeftModelFor...``):
    the base comes from the Auto class of the task, the adapter's ``task_type`` must be this class's."""

    target: ClassVar[type] = PeftModel

    @classmethod
    def from_pretrained(cls, adapter_dir: str, adapter_name: str = DEFAULT_ADAPTER, is_trainable: bool = False,
                        **base_kwargs: Any) -> PeftModel:
        """Args:
            adapter_dir: the adapter directory (``adapter_config.json`` names the base model; a relative path
                may be relative to the directory or one of its parents).
            adapter_name: the name to give the adapter.
            is_trainable: False loads it frozen.
            base_kwargs: config overrides for the base model.
        """
        from ..auto import auto_model_for_task

        config = config_from_dir(adapter_dir)
        if config.task_type is not None and peft_model_class(config.task_type) is not cls.target:
            raise ValueError(f"{adapter_dir}: expected target PEFT class {peft_model_class(config.task_type).__name__} "
                             f"(task_type {config.task_type!r}), but {cls.__name__} loads {cls.target.__name__}; use "
                             f"the AutoPeftModel class of the adapter's task")
        base = config.base_model_name_or_path
        if not base:
            raise ValueError(f"{adapter_dir}: adapter_config.json has no base_model_name_or_path; load the base "
                             "model yourself and use PeftModel.from_pretrained")
        candidates = [base] + [os.path.join(root, base) for root in _parents(adapter_dir)]
        source = next((c for c in candidates if os.path.exists(c)), base)  # else a preset name
        model = auto_model_for_task(cls.target.model_task).from_pretrained(source, **base_kwargs)
        return cls.target.from_pretrained(model, adapter_dir, adapter_name, is_trainable=is_trainable, config=config)


class AutoPeftModelForCausalLM(_AutoPeftModel):
    target = PeftModelForCausalLM


class AutoPeftModelForSequenceClassification(_AutoPeftModel):
    target = PeftModelForSequenceClassification


class AutoPeftModelForTokenClassification(_AutoPeftModel):
    target = PeftModelForTokenClassification


class AutoPeftModelForQuestionAnswering(_AutoPeftModel):
    target = PeftModelForQuestionAnswering


class AutoPeftModelForFeatureExtraction(_AutoPeftModel):
    target = PeftModelForFeatureExtraction
