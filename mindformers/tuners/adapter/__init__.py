"""SWIFT's Adapter (Houlsby et al. 2019): a bottleneck MLP on chosen modules' outputs."""
from ...registry import TUNERS
from ..tuner_layer import TunerMethod
from .config import AdapterConfig
from .model import inject_adapter

TUNERS.register(TunerMethod("ADAPTER", AdapterConfig, inject_adapter, mergeable=False, slots=("adapter_",),
                            pet_names=("adapter",), peft_format=False,
                            merge_refusal="a bottleneck MLP with a nonlinearity has no form in the weights"),
                name="ADAPTER")
