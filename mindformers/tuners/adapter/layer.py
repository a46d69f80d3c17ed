"""SWIFT's Adapter: after a module's forward pass, ``y + linear2(act(linear1(y)))`` (ms-swift ``AdapterModule``),
one bottleneck per adapter applied in the order they were added. Weights are initialised as SWIFT does
(Xavier-uniform matrices, biases ~ N(0, 1e-6)), so the model changes from the start, as it does in SWIFT.

The module keeps its own Parameters and path: its class is swapped for a subclass whose ``construct`` runs
the original one and then the active adapters, held as ``adapter_<name>`` attributes (SWIFT's names, so
``<module>.adapter_<name>.linear1.weight`` is both our path and SWIFT's file key).
"""
import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from ...models.common.layers import Linear
from ..tuner_layer import AdapterState, SwappedClass

PREFIX = "adapter_"


def _activation(name: str):
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: ops.gelu(x, approximate="tanh")
    if name == "gelu":
        return lambda x: ops.gelu(x, approximate="none")
    return {"relu": ops.relu, "silu": ops.silu, "swish": ops.silu, "tanh": ops.tanh, "sigmoid": ops.sigmoid}[name]


class AdapterModule(nn.Cell):
    """``x + linear2(act(linear1(x)))``."""

    def __init__(self, dim: int, length: int, act: str, rng: np.random.Generator, dtype=ms.float32):
        super().__init__()
        self.linear1, self.linear2 = Linear(dim, length, True, dtype), Linear(length, dim, True, dtype)
        for layer in (self.linear1, self.linear2):
            out, fan_in = layer.weight.shape
            bound = np.sqrt(6.0 / (fan_in + out))  # torch.nn.init.xavier_uniform_
            layer.weight.set_data(Tensor(rng.uniform(-bound, bound, (out, fan_in)).astype(np.float32), dtype))
            layer.bias.set_data(Tensor(rng.normal(0.0, 1e-6, (out,)).astype(np.float32), dtype))
        self.act = _activation(act)

    def construct(self, x):
        return x + self.linear2(self.act(self.linear1(x)))


class AdapterHost(SwappedClass):
    """Mixed into the adapted module's class by :func:`adapted_class` (not used on its own)."""

    merge_refusal = "an Adapter (a bottleneck MLP with a nonlinearity) cannot be merged into the weights"

    hidden_pos = None

    def add_adapter(self, name: str, config, rng: np.random.Generator) -> None:
        dim = config.dim
        setattr(self, PREFIX + name, AdapterModule(dim, config.adapter_length, config.act_layer, rng))
        if name not in self.adapter_names:
            self.adapter_names.append(name)

    def delete_adapter(self, name: str) -> None:
        delattr(self, PREFIX + name)
        self.adapter_names.remove(name)



def adapted_class(cls):
    """A subclass of ``cls`` whose ``construct`` adds the active adapters to (one element of) its output."""
    if issubclass(cls, AdapterHost):
        return cls

    class Adapted(AdapterHost, cls):
        _original_class = cls

        def construct(self, *args):
            out = cls.construct(self, *args)  # (zero-argument super() recurses in MindSpore's graph mode)
            pos = self.hidden_pos
            for name in self.running_adapters():
                adapter = getattr(self, PREFIX + name)
                if pos is None:
                    out = adapter(out)
                else:
                    out = out[:pos] + (adapter(out[pos]),) + out[pos + 1:]
            return out

    Adapted.__name__ = Adapted.__qualname__ = f"Adapter{cls.__name__}"
    return Adapted


def adapt(cell: nn.Cell, state: AdapterState, hidden_pos) -> nn.Cell:
    """Turn ``cell`` into an adapter host in place (once); returns it."""
    if not isinstance(cell, AdapterHost):
        cell.__class__ = adapted_class(type(cell))
        cell._init_tuner_layer(state)  # pylint: disable=protected-access
        cell.hidden_pos = hidden_pos
    elif cell.hidden_pos != hidden_pos:
        raise ValueError(f"{type(cell).__name__} already adapts output element {cell.hidden_pos}, not {hidden_pos}")
    return cell
