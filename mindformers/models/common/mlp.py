"""Feed-forward blocks: the gated (SwiGLU) MLP of Llama and its kin."""
import mindspore as ms
from mindspore import nn, ops

from ...kernels import host
from ...registry import BLOCKS
from .layers import MS_DTYPES, Linear


class HostSwiGLU(nn.Cell):
    """``silu(gate) * up`` and its gradient by the host kernels (CPU; built where ``host.enabled()``).

    Why: MindSpore's CPU kernels keep a buffer per op instance for the life of a compiled graph, and the
    generic form is SiLU and Mul forward, SiLUGrad and two Muls backward, each the size of the [tokens,
    intermediate] activation; here one forward and one backward kernel (see docs/mindspore_cpu.md).
    """

    def construct(self, gate, up):
        return host.swiglu(gate, up)

    def bprop(self, gate, up, out, dout):
        d_gate, d_up = host.swiglu_grad(dout, gate, up)
        return d_gate, d_up


def swiglu(gate, up, fused=None):
    """``silu(gate) * up``; by ``fused`` (a :class:`HostSwiGLU`, or None for the generic ops) when both are
    float32 (a dtype test is settled when the graph compiles)."""
    if fused is not None and gate.dtype == ms.float32 and up.dtype == ms.float32:
        return fused(gate, up)
    return ops.silu(gate) * up


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
        self.host_swiglu = HostSwiGLU() if host.enabled() else None

    def construct(self, x):
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x), self.host_swiglu))


def gated_activation(gate_up, width: int, fused=None):
    """``silu(gate) * up`` of a fused ``[..., 2 * width]`` projection whose first half is the gate; ``fused``:
    a :class:`HostSwiGLU` or None, as for :func:`swiglu`."""
    return swiglu(gate_up[..., :width], gate_up[..., width:], fused)
