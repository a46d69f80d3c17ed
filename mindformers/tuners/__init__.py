"""Parameter-efficient tuners with SWIFT-style and PEFT-style APIs and PEFT-compatible files.

One folder per method (``lora/``, ``ia3/``, ``adapter/``), registered in ``TUNERS`` with what the core needs
(:class:`~mindformers.tuners.tuner_layer.TunerMethod`); the wrapper model (``tuner_model.py``), target
matching (``targets.py``), the PEFT API (``peft.py``) and the SWIFT API (``swift.py``) are shared by all.
"""
from .config import TunerConfig
from .lora import LoraConfig, LoraEmbedding, LoraLinear, LoRAConfig, create_optimizer_param_groups
from .ia3 import IA3Config, IA3Linear
from .adapter import AdapterConfig
from .side import SideConfig
from .restuning import ResTuningConfig
from .loha import LoHaConfig, LoHaLinear
from .lokr import LoKrConfig, LoKrLinear
from .prompt_tuning import PromptTuningConfig
from .p_tuning import PromptEncoderConfig
from .neftune import NEFTuneConfig
from .llama_pro import LLaMAProConfig
from .vera import VeraConfig, VeraLinear
from .fourierft import FourierFTConfig, FourierFTLinear
from .prefix_tuning import PrefixTuningConfig
from .adaption_prompt import AdaptionPromptConfig
from .longlora import LongLoRAConfig
from .lisa import LisaCallback, LisaConfig
from .galore import GaLoreAdamW, GaLoreConfig
from .peft import (
    PeftMixedModel,
    PeftModel,
    TunerLayerStatus,
    TunerModelStatus,
    cast_mixed_precision_params,
    get_layer_status,
    get_model_status,
    get_peft_model,
    get_peft_model_state_dict,
    inject_adapter_in_model,
    set_peft_model_state_dict,
)
from .peft_tasks import (
    AutoPeftModelForCausalLM,
    AutoPeftModelForFeatureExtraction,
    AutoPeftModelForQuestionAnswering,
    AutoPeftModelForSequenceClassification,
    AutoPeftModelForTokenClassification,
    PeftModelForCausalLM,
    PeftModelForFeatureExtraction,
    PeftModelForQuestionAnswering,
    PeftModelForSequenceClassification,
    PeftModelForTokenClassification,
)
from .swift import Swift, SwiftModel
from .tuner_layer import AdapterState
from .tuner_model import TunerModel
from .adalora import AdaLoraConfig, RankAllocator, SVDLinear
