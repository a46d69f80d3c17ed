"""SWIFT's Side-Tuning for decoders (ms-swift ``SideModule`` with its ``Mlp`` side network).

ms-swift replaces the target module's forward by one that runs the original, then blends::

    x     = args[source_hidden_pos]                 # the module's own input, e.g. [batch, seq, hidden]
    main  = out[target_hidden_pos] (or out)         # its output
    out   = sigmoid(alpha) * main + (1 - sigmoid(alpha)) * side_net(x)

with ``alpha`` a learned scalar starting at 0 (so the model changes from the start: each half weighs 0.5)
and ``side_net = fc2(GELU(fc1(x)))`` (timm's ``Mlp`` with SWIFT's arguments: dim -> dim -> dim, biases,
no dropout, no norm), both Linear layers initialised as ``torch.nn.Linear`` is (uniform within
``1/sqrt(fan_in)``, weights and biases).

As for SWIFT's Adapter here, the module keeps its Parameters and path: its class is swapped for a subclass
whose ``construct`` blends after the original one, and each adapter's side network is the attribute
``side_<name>`` (SWIFT's name, so ``<module>.side_<name>.side_net.fc1.weight`` and ``<module>.side_<name>.alpha``
are both our paths and SWIFT's file keys). Several Side adapters on one module blend in the order they were
added, as SWIFT's nested forwards do.
"""
import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from ...models.common.layers import Linear
from ..tuner_layer import AdapterState, SwappedClass

PREFIX = "side_"


def torch_linear_init(layer: Linear, rng: np.random.Generator) -> None:
    """``torch.nn.Linear``'s default: weight and bias uniform within ``1/sqrt(fan_in)``."""
    out, fan_in = layer.weight.shape
    bound = 1.0 / np.sqrt(fan_in)
    layer.weight.set_data(Tensor(rng.uniform(-bound, bound, (out, fan_in)).astype(np.float32), layer.weight.dtype))
    layer.bias.set_data(Tensor(rng.uniform(-bound, bound, (out,)).astype(np.float32), layer.bias.dtype))


class Mlp(nn.Cell):
    """SWIFT's side MLP: ``fc2(gelu(fc1(x)))``, [..., dim] -> [..., dim]."""

    def __init__(self, dim: int, rng: np.random.Generator, dtype=ms.float32):
        super().__init__()
        self.fc1, self.fc2 = Linear(dim, dim, True, dtype), Linear(dim, dim, True, dtype)
        torch_linear_init(self.fc1, rng)
        torch_linear_init(self.fc2, rng)

    def construct(self, x):
        return self.fc2(ops.gelu(self.fc1(x), approximate="none"))  # torch.nn.GELU(): the exact (erf) form


class SideModule(nn.Cell):
    """``sigmoid(alpha) * x_main + (1 - sigmoid(alpha)) * side_net(x)``; ``alpha`` is a 0-d Parameter as in SWIFT."""

    def __init__(self, dim: int, rng: np.random.Generator, source_pos: int, target_pos: int, dtype=ms.float32):
        super().__init__()
        self.side_net = Mlp(dim, rng, dtype)
        self.alpha = Parameter(Tensor(np.zeros((), np.float32), dtype), name="alpha")
        self.source_pos, self.target_pos = source_pos, target_pos  # constants of the compiled graph

    def construct(self, x, x_main):
        alpha = ops.sigmoid(self.alpha)
        return alpha * x_main + (1 - alpha) * self.side_net(x)


class SideHost(SwappedClass):
    """Mixed into the target module's class by :func:`sided_class` (not used on its own)."""

    merge_refusal = "a Side network (a nonlinear MLP of the module's input blended with its output) cannot be merged into the weights"

    def add_adapter(self, name: str, dim: int, rng: np.random.Generator, source_pos: int, target_pos: int) -> None:
        setattr(self, PREFIX + name, SideModule(dim, rng, source_pos, target_pos))
        if name not in self.adapter_names:
            self.adapter_names.append(name)

    def delete_adapter(self, name: str) -> None:
        delattr(self, PREFIX + name)
        self.adapter_names.remove(name)

    def blended(self, args, out):
        """``out`` with every running side network blended in, in the order the adapters were added."""
        for name in self.adapter_names:
            if name in self.running_adapters():
                side = getattr(self, PREFIX + name)
                x = args[side.source_pos]
                if isinstance(out, tuple):
                    pos = side.target_pos
                    out = out[:pos] + (side(x, out[pos]),) + out[pos + 1:]
                else:
                    out = side(x, out)
        return out


def sided_class(cls):
    """A subclass of ``cls`` whose ``construct`` blends the active side networks into its output."""
    if issubclass(cls, SideHost):
        return cls

    class Sided(SideHost, cls):
        _original_class = cls

        def construct(self, *args):
            out = cls.construct(self, *args)  # (zero-argument super() recurses in MindSpore's graph mode)
            return self.blended(args, out)

    Sided.__name__ = Sided.__qualname__ = f"Side{cls.__name__}"
    return Sided


def side_host(cell: nn.Cell, state: AdapterState) -> SideHost:
    """Turn ``cell`` into a side-network host in place (once); returns it."""
    if not isinstance(cell, SideHost):
        cell.__class__ = sided_class(type(cell))
        cell._init_tuner_layer(state)  # pylint: disable=protected-access
    return cell
