"""``modules_to_save``: modules trained in full, one copy per adapter (PEFT's ``ModulesToSaveWrapper``).

The wrapper keeps the original module's Parameters as its own attributes, so the base model's tensor
names do not change (``score.weight`` stays ``score.weight``); each adapter's copy lives at
``<module>.modules_to_save.<adapter>.<param>`` and is saved by PEFT as ``<module>.<param>``.
"""
import copy

from mindspore import nn

from ..utils import write_parameter
from .tuner_layer import AdapterState, TunerLayer


class ModulesToSaveWrapper(nn.Cell, TunerLayer):
    """Runs the first active adapter's copy of ``module``, or the original when none is active."""

    def __init__(self, module: nn.Cell, state: AdapterState):
        super().__init__()
        if any(True for cell in module.cells() for _ in cell.get_parameters()):  # a weightless kernel cell is fine
            raise ValueError(f"modules_to_save supports leaf layers (Linear, Embedding, norms); "
                             f"{type(module).__name__} has sub-layers with weights")
        self._init_tuner_layer(state)
        object.__setattr__(self, "original_module", module)
        for name, param in module.parameters_and_names(expand=False):
            setattr(self, name, param)  # keep the base names: <module>.weight
        self.modules_to_save = nn.CellDict()

    def add_adapter(self, name: str) -> None:
        clone = copy.deepcopy(self.original_module)  # its own Parameters, same values
        for param in clone.get_parameters():
            param.requires_grad = True
        self.modules_to_save[name] = clone
        if name not in self.adapter_names:
            self.adapter_names.append(name)

    def delete_adapter(self, name: str) -> None:
        del self.modules_to_save[name]
        self.adapter_names.remove(name)

    def construct(self, *args):
        running = self.running_adapters()
        if running:
            return self.modules_to_save[running[0]](*args)
        return self.original_module(*args)

    def merge(self, names) -> None:
        """Make the first of ``names`` that has a copy the module's weights (merge_and_unload)."""
        for name in names:
            if name in self.adapter_names:
                for pname, param in self.modules_to_save[name].parameters_and_names(expand=False):
                    write_parameter(getattr(self.original_module, pname), param.value().copy())
                self.merged_adapters.append(name)
                return

    def unmerge(self) -> None:
        if self.merged_adapters:
            raise ValueError("a merged modules_to_save copy replaced the original weights; reload the base model")

    def unwrap(self) -> nn.Cell:
        return self.original_module
