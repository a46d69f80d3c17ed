"""A short soak of the real server (the long one is ``bench/serve.py --soak``): 16 concurrent clients, half
streaming and some abandoning their stream, across the base model and 8 adapters served from a pool of 3
slots (the adapter cache cycles): every answer equals the same request alone, no request is lost, and the
server's memory does not grow with the number of requests."""
import os

import pytest

from mindformers.serving import Engine, RuntimeConfigBuilder
from mindformers.serving import soak
from tests.serving.conftest import ADAPTERS
from tests.serving.test_server import http_server

MODEL = "tiny-soak"


@pytest.fixture(scope="module")
def url(model_dir, adapter_dirs):
    engine = Engine()
    engine.install_model(RuntimeConfigBuilder(MODEL, model=model_dir).max_batch(8).max_length(64)
                         .lora_max_num(3).lora_max_rank(16).max_queue(64).build())
    engine.start_model(MODEL)
    for name in ADAPTERS:
        engine.register_lora(MODEL, name, adapter_dirs[name])
    try:
        with http_server(engine, MODEL) as base_url:
            yield base_url
    finally:
        engine.uninstall_model(MODEL)


def test_soak_answers_equal_alone_nothing_lost(url):
    models = [MODEL, *ADAPTERS]
    report = soak.run(url, models, prompts=soak.PROMPTS[:3], clients=16, duration=8.0, max_tokens=8,
                      stream_fraction=0.5, abandon_fraction=0.15, pid=os.getpid(), seed=1)
    print(report.summary())
    assert report.ok, report.summary()
    assert report.requests >= 32 and report.streamed and report.blocking and report.abandoned, report.summary()
    misses = soak._Client(url, None, 30).get("/metrics/json")  # pylint: disable=protected-access
    assert sum(a.get("misses", 0) for a in misses["adapters"].values()) > len(ADAPTERS), "the cache did not cycle"
    assert len(report.first_token) >= report.streamed and len(report.rss) >= 10
