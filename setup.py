"""Install mindformers: `pip install -e .[test]` (the Makefile does this, see README)."""
from setuptools import find_packages, setup

setup(
    name="mindformers",
    version="0.1.0",
    description="A MindSpore suite for large language models: models, tokenizers, generation, tuners, training",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9,<3.12",
    packages=find_packages(include=["mindformers", "mindformers.*"]),
    package_data={"mindformers.kernels": ["host_kernels.cc"]},  # compiled on the user's machine (kernels/host.py)
    install_requires=[
        "mindspore==2.10.0",
        "numpy<2",  # mindspore 2.10 fails at the first tensor op with numpy 2
        "safetensors>=0.4",
        "tokenizers>=0.19",
        "sentencepiece>=0.2.3",  # offset_mapping results (tokenizers/sentencepiece.py)
        "protobuf>=3.20",
        "jinja2>=3.1",
        "pyyaml>=6.0",
        "gguf>=0.10",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        "matplotlib>=3.7",
        "fastapi>=0.110",  # the OpenAI-compatible server (mindformers/serving/server.py)
        "uvicorn>=0.29",
        "threadpoolctl>=3.1",  # the serving engine's host kernel runs BLAS on one thread
        "prometheus_client>=0.20",  # the server's /metrics in Prometheus' text format
    ],
    extras_require={
        # schemathesis 4's pytest API; pytest-xdist runs the suite on two workers (make test)
        "test": ["pytest>=8", "pytest-xdist>=3.8,<4", "openai>=1.0", "schemathesis>=4.32,<5"],
        # the peers the benchmarks compare against (torch 2.13.0 is the CPU build this machine provides)
        "bench": ["torch==2.13.0", "transformers==5.23.0", "accelerate>=1.0", "peft==0.21.2"],
    },
)
