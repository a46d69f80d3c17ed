"""mindformers: a MindSpore suite for large language models.

The public API; importing it registers the built-in models, tokenizers and processors and has no other
side effect.
"""
from .auto import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForFeatureExtraction,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoProcessor,
    AutoTokenizer,
)
from .configuration_utils import PretrainedConfig
from .dataset import TokenizedDataset, build_dataset
from .generation import BaseStreamer, GenerationConfig, TextIteratorStreamer, TextStreamer
from .modeling_utils import CheckpointMismatchError, NonFiniteWeightsError, PreTrainedModel
from .models.gpt2 import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel
from .models.llama import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForQuestionAnswering,
    LlamaForSequenceClassification,
    LlamaForTokenClassification,
    LlamaModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2ForSequenceClassification,
)
from .models.deepseek_v3 import DeepseekV3Config, DeepseekV3ForCausalLM, DeepseekV3ForSequenceClassification
from .models.mistral import MistralConfig, MistralForCausalLM, MistralForSequenceClassification
from .models.mixtral import MixtralConfig, MixtralForCausalLM, MixtralForSequenceClassification
from .models.pangualpha import PanguAlphaConfig, PanguAlphaHeadModel
from .models.qwen3 import Qwen3Config, Qwen3ForCausalLM, Qwen3ForSequenceClassification
from .models.qwen3_moe import Qwen3MoeConfig, Qwen3MoeForCausalLM, Qwen3MoeForSequenceClassification
from .pipeline import (
    FeatureExtractionPipeline,
    Pipeline,
    TextClassificationPipeline,
    TextGenerationPipeline,
    pipeline,
)
from .parallel import ContextConfig, ParallelConfig, ParallelContextConfig, RecomputeConfig, init_context
from .presets import list_presets
from .processors import BaseProcessor, GPT2Processor, LlamaProcessor
from .registry import CONFIGS, MODELS, PROCESSORS, TASKS, TOKENIZERS, TUNERS, Registry
from .tokenizers import GPT2Tokenizer, LlamaTokenizer, PreTrainedTokenizer
from .trainer import Trainer, TrainerCallback, TrainerState, TrainingArguments

__version__ = "0.1.0"
