"""DeepSeek-V3: the shared decoder with multi-head latent attention and sigmoid-routed experts."""
from ...registry import MODELS
from ..common.decoder import DecoderForCausalLM, DecoderForSequenceClassification
from .config import DeepseekV3Config


class _SkipsPredictionLayers:
    """DeepSeek-V3 checkpoints carry ``num_nextn_predict_layers`` multi-token-prediction layers after the
    decoder (``model.layers.<num_hidden_layers + j>.*``); like transformers, loading skips them."""

    def _is_ignored_key(self, key: str) -> bool:
        config = self.config
        extra = range(config.num_hidden_layers, config.num_hidden_layers + config.num_nextn_predict_layers)
        return any(key.startswith(f"model.layers.{i}.") for i in extra) or super()._is_ignored_key(key)


@MODELS.register
class DeepseekV3ForCausalLM(_SkipsPredictionLayers, DecoderForCausalLM):
    config_class = DeepseekV3Config


@MODELS.register
class DeepseekV3ForSequenceClassification(_SkipsPredictionLayers, DecoderForSequenceClassification):
    config_class = DeepseekV3Config
