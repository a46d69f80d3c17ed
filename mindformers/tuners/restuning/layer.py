"""SWIFT's Res-Tuning-Bypass for decoders (ms-swift ``ResTuningBypassModule`` / ``ResTunerBypassBlock`` /
``ResTuner`` / ``ResAdapter``).

The bypass of adapter ``<name>`` is the model's attribute ``restuning_<name>`` (SWIFT's name and place: the
top module), so its file keys are SWIFT's: ``restuning_<name>.bypass_blocks.<i>.lateral_tuner.tuner.ln1.weight``.
With the root's hidden states ``r`` and the stems' ``s_0 .. s_{n-1}``, all detached::

    x = r
    x = lateral_i(s_i) + vertical_i(x)        for each block i
    lateral / vertical = x + ln2(GELU(ln1(x))) [* scaling]   (res_adapter), 0 (zero) or x (None)

and ``x`` replaces the target's input (or output). ``ln1``/``ln2`` are Xavier-uniform with biases ~ N(0, 1e-6),
as SWIFT initialises them; ``zero_init_last`` zeroes the last block's ``ln2``.

SWIFT probes with forward hooks that store tensors on modules; a compiled MindSpore graph cannot pass tensors
between modules that way (attribute reads are folded into constants at compile time), so the probes are taken
where the decoder stack loops over its layers: the stack's class is swapped for a subclass whose
``run_layers`` keeps every layer's input and output and runs the bypasses there (see :class:`ResTuningStack`).
Probe points are numbered in forward order: layer i's input ``2i``, its output ``2i + 1``; the final norm's
input ``2L`` and output ``2L + 1``.
"""
import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from ...models.common.layers import Linear
from ..tuner_layer import AdapterState, SwappedClass

PREFIX = "restuning_"


def _xavier(layer: Linear, rng: np.random.Generator) -> None:
    out, fan_in = layer.weight.shape
    bound = np.sqrt(6.0 / (fan_in + out))  # torch.nn.init.xavier_uniform_; bias: normal_(std=1e-6)
    layer.weight.set_data(Tensor(rng.uniform(-bound, bound, (out, fan_in)).astype(np.float32), layer.weight.dtype))
    layer.bias.set_data(Tensor(rng.normal(0.0, 1e-6, (out,)).astype(np.float32), layer.bias.dtype))


def _zeros(layer: Linear) -> None:
    layer.weight.set_data(Tensor(np.zeros(layer.weight.shape, np.float32), layer.weight.dtype))
    layer.bias.set_data(Tensor(np.zeros(layer.bias.shape, np.float32), layer.bias.dtype))


class ResAdapter(nn.Cell):
    """``x + ln2(GELU(ln1(x))) [* scaling]`` over the last axis of [batch, seq, dim]."""

    def __init__(self, dim: int, length: int, weight, zero_last: bool, rng: np.random.Generator, dtype=ms.float32):
        super().__init__()
        self.ln1, self.ln2 = Linear(dim, length, True, dtype), Linear(length, dim, True, dtype)
        _xavier(self.ln1, rng)
        if zero_last:
            _zeros(self.ln2)
        else:
            _xavier(self.ln2, rng)
        kind, value = weight if weight is not None else (None, None)
        self.weight_kind, self.scalar = kind, value
        if kind in ("scale", "scale_channel"):  # SWIFT: torch.Tensor(1) / torch.Tensor(dim) filled with 1
            self.scaling = Parameter(Tensor(np.ones((1,) if kind == "scale" else (dim,), np.float32), dtype),
                                     name="scaling")

    def construct(self, x):
        delta = self.ln2(ops.gelu(self.ln1(x), approximate="none"))  # torch.nn.GELU(): exact
        if self.weight_kind == "scalar":
            delta = delta * self.scalar
        elif self.weight_kind is not None:
            delta = delta * self.scaling
        return x + delta


class ResTuner(nn.Cell):
    """One lateral or vertical tuner: a Res-Adapter (held as ``tuner``, SWIFT's attribute), zero, or identity."""

    def __init__(self, spec, dim: int, layer_num: int, depth: int, zero_init_last: bool, rng: np.random.Generator):
        super().__init__()
        kind, settings = spec
        self.kind = kind
        if kind == "res_adapter":
            length = settings["adapter_length"]
            length = length[layer_num] if isinstance(length, list) else length
            self.tuner = ResAdapter(dim, length, settings["adapter_weight"], zero_init_last and layer_num == depth - 1,
                                    rng)

    def construct(self, x):
        if self.kind == "zero":
            return ops.zeros_like(x)
        if self.kind == "res_adapter":
            return self.tuner(x)
        return x


class ResTunerBypassBlock(nn.Cell):
    """``lateral_tuner(x_stem) + vertical_tuner(x_bypass)``."""

    def __init__(self, specs, dim: int, layer_num: int, depth: int, zero_init_last: bool, rng: np.random.Generator):
        super().__init__()
        lateral, vertical = specs
        self.lateral_tuner = ResTuner(lateral, dim, layer_num, depth, zero_init_last, rng)
        self.vertical_tuner = ResTuner(vertical, dim, layer_num, depth, zero_init_last, rng)

    def construct(self, x_stem, x_bypass):
        return self.lateral_tuner(x_stem) + self.vertical_tuner(x_bypass)


class ResTuningBypassModule(nn.Cell):
    """The bypass chain over ``bypass_blocks``: from the root's hidden states through one block per stem."""

    def __init__(self, dims, block_specs, zero_init_last: bool, rng: np.random.Generator):
        super().__init__()
        depth = len(block_specs)
        self.bypass_blocks = nn.CellList([
            ResTunerBypassBlock(specs, dims[i], i, depth, zero_init_last, rng) for i, specs in enumerate(block_specs)])

    def construct(self, root, stems):
        x = root
        for i, block in enumerate(self.bypass_blocks):
            x = block(stems[i], x)
        return x


class ResTuningStack(SwappedClass):
    """Mixed into the decoder stack's class by :func:`restuning_class` (not used on its own).

    ``_restuning_plans`` holds, per adapter in the order added, ``(name, root point, stem points, target point)``;
    the bypass modules live on the top model (``restuning_<name>``) and are reached through ``_restuning_top``.
    """

    merge_refusal = ("a Res-Tuning bypass (nonlinear tuners on detached hidden states, replacing the target's input) "
                     "cannot be merged into the weights")

    def add_adapter(self, name: str, top: nn.Cell, bypass: ResTuningBypassModule, plan) -> None:
        object.__setattr__(self, "_restuning_top", top)  # the model holding this stack: not a sub-cell
        setattr(top, PREFIX + name, bypass)
        self._restuning_plans = tuple(p for p in self._restuning_plans if p[0] != name) + ((name,) + tuple(plan),)
        if name not in self.adapter_names:
            self.adapter_names.append(name)

    def delete_adapter(self, name: str) -> None:
        delattr(self._restuning_top, PREFIX + name)
        self._restuning_plans = tuple(p for p in self._restuning_plans if p[0] != name)
        self.adapter_names.remove(name)

    def restuned(self, point: int, x, seen):
        """``x`` at probe ``point`` after the running bypasses that target it. Each bypass discards what it
        replaces, so only one counts; SWIFT nests forwards so that the first-added adapter wins on an input
        and the last-added on an output (odd points): the same order is kept here."""
        plans = self._restuning_plans if point % 2 else self._restuning_plans[::-1]
        for name, root, stems, target in plans:
            if target == point and name in self.running_adapters():
                probes = ()
                for p in stems:
                    probes = probes + (ops.stop_gradient(seen[p]),)  # SWIFT's detach_tensors
                x = getattr(self._restuning_top, PREFIX + name)(ops.stop_gradient(seen[root]), probes)
        return x

    def replaces_norm_output(self) -> bool:
        """Whether a running bypass replaces the final norm's output (then ``run_layers`` returns it already)."""
        last = 2 * len(self.layer_list()) + 1
        replaced = False
        for name, _, _, target in self._restuning_plans:  # (a loop: compiled graphs cannot close over `last`)
            if target == last and name in self.running_adapters():
                replaced = True
        return replaced


def restuning_class(cls):
    """A subclass of the decoder stack ``cls`` whose layer loop keeps the probes and runs the bypasses."""
    if issubclass(cls, ResTuningStack):
        return cls

    class ResTuned(ResTuningStack, cls):
        _original_class = cls

        def run_layers(self, x, cos, sin, mask, window_mask, kv_cache, write_index, cache_rows, first: int = 0):
            if not self.running_adapters():
                return cls.run_layers(self, x, cos, sin, mask, window_mask, kv_cache, write_index, cache_rows, first)
            seen = ()  # the hidden states at every probe point so far
            router_logits = ()
            for i, layer in enumerate(self.layer_list()):
                seen = seen + (x,)
                x = self.restuned(2 * i, x, seen)
                if kv_cache is None:
                    x, logits = layer(x, cos, sin, mask, window_mask)
                else:
                    x, logits = layer(x, cos, sin, mask, window_mask, kv_cache[2 * (first + i)],
                                      kv_cache[2 * (first + i) + 1], write_index, cache_rows)
                if logits is not None:
                    router_logits = router_logits + (logits,)
                seen = seen + (x,)
                x = self.restuned(2 * i + 1, x, seen)
            last = 2 * len(self.layer_list())
            seen = seen + (x,)
            x = self.restuned(last, x, seen)  # the final norm's input
            return self.restuned(last + 1, x, seen), router_logits  # its output: finish then skips the norm

        def finish(self, x, position_ids, mask, kv_cache, write_index, cache_rows):
            if self.replaces_norm_output():
                return x
            return cls.finish(self, x, position_ids, mask, kv_cache, write_index, cache_rows)

    ResTuned.__name__ = ResTuned.__qualname__ = f"ResTuning{cls.__name__}"
    return ResTuned


def restuning_host(stack: nn.Cell, state: AdapterState) -> ResTuningStack:
    """Turn the decoder ``stack`` into a Res-Tuning host in place (once); returns it."""
    if not isinstance(stack, ResTuningStack):
        stack.__class__ = restuning_class(type(stack))
        stack._init_tuner_layer(state)  # pylint: disable=protected-access
        stack._restuning_plans = ()
    return stack
