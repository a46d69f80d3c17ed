"""Feed-forward blocks: the gated (SwiGLU) MLP of Llama and its kin."""
from mindspore import nn, ops

from ...registry import BLOCKS
from .layers import MS_DTYPES, Linear


@BLOCKS.register
class GatedMLP(nn.Cell):
    """``down(silu(gate(x)) * up(x))`` (Shazeer 2020).

    Args:
        config: the model config (``hidden_size``, ``intermediate_size``, ``mlp_bias``, ``dtype``).
        layer_idx: unused (every block part takes it).
        intermediate_size: width of the hidden layer instead of ``config.intermediate_size`` (MoE experts,
            DeepSeek's shared experts).
    """

    def __init__(self, config, layer_idx: int = 0, intermediate_size: int = None):
        super().__init__()
        dtype = MS_DTYPES[config.dtype]
        width = config.intermediate_size if intermediate_size is None else intermediate_size
        bias = getattr(config, "mlp_bias", False)
        self.gate_proj = Linear(config.hidden_size, width, bias, dtype)
        self.up_proj = Linear(config.hidden_size, width, bias, dtype)
        self.down_proj = Linear(width, config.hidden_size, bias, dtype)

    def construct(self, x):
        return self.down_proj(ops.silu(self.gate_proj(x)) * self.up_proj(x))


def gated_activation(gate_up, width: int):
    """``silu(gate) * up`` of a fused ``[..., 2 * width]`` projection whose first half is the gate."""
    return ops.silu(gate_up[..., :width]) * gate_up[..., width:]
