"""The OpenAI-compatible server, used as a client would: the official ``openai`` client (and raw HTTP for
malformed requests) against a real server (uvicorn in a thread) on the tiny random Llama with SmolLM2's
tokenizer and the eight random LoRA adapters of ``conftest.py``. Answers are checked against the ids of
``engine.sync_request`` for the same settings."""
import collections
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import hypothesis
import openai
import pytest
import schemathesis
import uvicorn

from mindformers.serving import Engine, RuntimeConfigBuilder, ServingError
from mindformers.serving.status import StatusCode
from mindformers.serving.server import IncrementalText, ServerConfig, create_app
from tests.serving.conftest import ADAPTERS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = "tiny"
ADAPTER_NAMES = list(ADAPTERS)  # 8 adapters of ranks 2..16 on different layers, one in SWIFT's files
PROMPT = "Once upon a time"
CHAT = [{"role": "user", "content": "Tell me a story."}]
NEW = 12  # new tokens of most requests
MAX_LENGTH = 128


@contextlib.contextmanager
def http_server(engine, model_name, config=None):
    """A real uvicorn server for ``model_name`` on a free port, in a thread; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(create_app(engine, model_name, config), host="127.0.0.1", port=0,
                                          log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, "the server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def http(url, body=None, raw=None, headers=None):
    """GET (no body) or POST JSON to ``url``; returns (status, decoded JSON body, headers)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), err.headers


def assert_openai_error(body, status_param=None):
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"]
    if status_param is not None:
        assert body["error"]["param"] == status_param, body


@pytest.fixture(scope="module")
def engine(model_dir, adapter_dirs):
    engine = Engine()
    engine.install_model(RuntimeConfigBuilder(MODEL, model=model_dir).max_batch(8).max_length(MAX_LENGTH)
                         .lora_max_num(9).lora_max_rank(16).max_queue(64).warmup(False).build())
    engine.start_model(MODEL)
    for name in ADAPTER_NAMES:
        engine.load_lora(MODEL, name, adapter_dirs[name])
    yield engine
    engine.uninstall_model(MODEL)


@pytest.fixture(scope="module")
def tok(engine):
    return engine.tokenizer(MODEL)


@pytest.fixture(scope="module")
def expected(engine, tok):
    """The greedy answer to PROMPT of the base model and of each adapter, from the engine itself."""
    answers = {}
    for name in [MODEL] + ADAPTER_NAMES:
        lora_name = None if name == MODEL else name
        status, ids = engine.sync_request(MODEL, PROMPT, {"max_new_tokens": NEW, "lora_name": lora_name})
        assert status and len(ids) == NEW
        answers[name] = tok.decode(ids, skip_special_tokens=True)
    return answers


@pytest.fixture(scope="module")
def url(engine):
    with http_server(engine, MODEL) as base_url:
        yield base_url


@pytest.fixture
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def test_completions_streamed_equal_blocking_equal_engine(client, tok, expected):
    prompt_tokens = len(tok(PROMPT)["input_ids"])
    for model in (MODEL, "all-8"):
        answer = client.completions.create(model=model, prompt=PROMPT, max_tokens=NEW, temperature=0)
        assert answer.object == "text_completion" and answer.model == model
        assert answer.choices[0].text == expected[model] and answer.choices[0].finish_reason == "length"
        assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (
            prompt_tokens, NEW, prompt_tokens + NEW)
        chunks = list(client.completions.create(model=model, prompt=PROMPT, max_tokens=NEW, stream=True))
        assert len(chunks) > 2 and all(c.object == "text_completion" for c in chunks)
        assert "".join(c.choices[0].text for c in chunks) == expected[model]
        assert [c.choices[0].finish_reason for c in chunks] == [None] * (len(chunks) - 1) + ["length"]


def test_prompt_as_token_ids(client, tok, expected):
    answer = client.completions.create(model="swift-4", prompt=tok(PROMPT)["input_ids"], max_tokens=NEW)
    assert answer.choices[0].text == expected["swift-4"]


def test_chat_streamed_equals_blocking_equals_engine(client, engine, tok):
    text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    status, ids = engine.sync_request(MODEL, text, {"max_new_tokens": NEW, "lora_name": "attn-16"})
    want = tok.decode(ids, skip_special_tokens=True)
    answer = client.chat.completions.create(model="attn-16", messages=CHAT, max_tokens=NEW)
    assert answer.object == "chat.completion" and answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == want and answer.choices[0].finish_reason == "length"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (len(tok(text)["input_ids"]), NEW)
    chunks = list(client.chat.completions.create(model="attn-16", messages=CHAT, max_completion_tokens=NEW,
                                                 stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert chunks[-2].choices[0].finish_reason == "length" and chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == NEW


def test_chat_without_max_tokens_runs_to_max_length(client):
    answer = client.chat.completions.create(model=MODEL, messages=CHAT)
    total = answer.usage.total_tokens
    assert total == MAX_LENGTH if answer.choices[0].finish_reason == "length" else total < MAX_LENGTH


def test_each_adapter_answers_differently(expected):
    assert len(set(expected.values())) == 1 + len(ADAPTER_NAMES), expected


def test_stop_string_cuts_the_text(client, expected):
    full = expected["mlp-6"]
    stop = full[len(full) // 2:len(full) // 2 + 3]
    cut = full[:full.find(stop)]
    answer = client.completions.create(model="mlp-6", prompt=PROMPT, max_tokens=NEW, stop=[stop, "never there"])
    assert answer.choices[0].text == cut and answer.choices[0].finish_reason == "stop"
    assert answer.usage.completion_tokens < NEW
    chunks = list(client.completions.create(model="mlp-6", prompt=PROMPT, max_tokens=NEW, stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == cut and chunks[-1].choices[0].finish_reason == "stop"


def test_sampling_follows_temperature_and_seed(client, engine, tok):
    settings = {"max_new_tokens": NEW, "do_sample": True, "temperature": 1.5, "top_k": 0, "top_p": 1.0, "seed": 7}
    status, ids = engine.sync_request(MODEL, PROMPT, {**settings, "lora_name": "qv-4"})
    answer = client.completions.create(model="qv-4", prompt=PROMPT, max_tokens=NEW, temperature=1.5, seed=7)
    assert answer.choices[0].text == tok.decode(ids, skip_special_tokens=True)
    status, ids = engine.sync_request(MODEL, PROMPT, {**settings, "top_k": 5, "repetition_penalty": 1.3})
    answer = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=NEW, temperature=1.5, seed=7,
                                       extra_body={"top_k": 5, "repetition_penalty": 1.3})
    assert answer.choices[0].text == tok.decode(ids, skip_special_tokens=True)


def test_32_concurrent_clients_across_8_adapters(client, url, engine, expected):
    before = engine.metrics(MODEL)["adapters"]
    answers, failures = {}, []

    def ask(i):
        model = ADAPTER_NAMES[i % len(ADAPTER_NAMES)]
        try:
            if i % 2:
                stream = client.completions.create(model=model, prompt=PROMPT, max_tokens=NEW, stream=True)
                answers[i] = (model, "".join(c.choices[0].text for c in stream))
            else:
                answer = client.completions.create(model=model, prompt=PROMPT, max_tokens=NEW)
                answers[i] = (model, answer.choices[0].text)
        except Exception as err:  # pylint: disable=broad-except
            failures.append((i, repr(err)))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures and len(answers) == 32
    assert {i: text for i, (model, text) in answers.items() if text != expected[model]} == {}
    after = engine.metrics(MODEL)
    for name in ADAPTER_NAMES:
        grew = {key: after["adapters"][name][key] - before[name][key]
                for key in ("requests", "finished", "completion_tokens")}
        assert grew == {"requests": 4, "finished": 4, "completion_tokens": 4 * NEW}, name
    assert (after["running"], after["waiting"]) == (0, 0)
    assert http(f"{url}/health")[:2] == (200, {"status": "ok"})
    status, served, _ = http(f"{url}/metrics/json")
    assert status == 200 and served["adapters"]["o-8"] == after["adapters"]["o-8"]


def test_client_disconnect_releases_the_request(client, engine):
    before = engine.metrics(MODEL)["adapters"]["qv-4"]
    stream = client.completions.create(model="qv-4", prompt=PROMPT, max_tokens=MAX_LENGTH - 8, stream=True)
    chunks = iter(stream)
    next(chunks), next(chunks)
    stream.close()
    deadline = time.time() + 20
    while engine.metrics(MODEL)["adapters"]["qv-4"]["interrupted"] == before["interrupted"]:
        assert time.time() < deadline, "the request of a client that went away was not released"
        time.sleep(0.05)
    after = engine.metrics(MODEL)
    assert after["running"] == 0
    assert after["adapters"]["qv-4"]["completion_tokens"] - before["completion_tokens"] < MAX_LENGTH - 8


def test_stop_ends_decoding_in_the_engine(client, engine, tok, expected):
    full = expected["o-8"]
    stop = full[len(full) // 2:len(full) // 2 + 3]
    status, ids = engine.sync_request(MODEL, PROMPT, {"max_new_tokens": 40, "lora_name": "o-8", "stop_strings": [stop]})
    assert status and stop in tok.decode(ids) and stop not in tok.decode(ids[:-1])  # ends at the stop string
    deadline = time.time() + 60
    while engine.metrics(MODEL)["running"] or engine.metrics(MODEL)["waiting"]:  # earlier releases settle
        assert time.time() < deadline
        time.sleep(0.01)
    before = engine.metrics(MODEL)["adapters"]["o-8"]
    answer = client.completions.create(model="o-8", prompt=PROMPT, max_tokens=40, stop=stop)
    assert answer.choices[0].text == full[:full.find(stop)] and answer.choices[0].finish_reason == "stop"
    assert answer.usage.completion_tokens == len(ids) < 40
    after = engine.metrics(MODEL)["adapters"]["o-8"]
    # the engine ended the request at the stop string (finished, not interrupted by the server's release)
    assert after["finished"] - before["finished"] == 1 and after["interrupted"] == before["interrupted"]
    assert after["completion_tokens"] - before["completion_tokens"] == len(ids)


def test_bad_requests_get_openai_errors(client, url):
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="no-such-adapter", prompt=PROMPT, max_tokens=NEW)
    assert err.value.body["code"] == "model_not_found" and err.value.body["param"] == "model"
    cases = [  # (path, body, param)
        ("/v1/chat/completions", {"model": MODEL}, "messages"),
        ("/v1/chat/completions", {"model": MODEL, "messages": "hello"}, "messages"),
        ("/v1/completions", {"prompt": PROMPT}, "model"),
        ("/v1/completions", {"model": MODEL, "prompt": PROMPT, "n": 2}, "n"),
        ("/v1/completions", {"model": MODEL, "prompt": PROMPT, "max_tokens": -1}, "max_tokens"),
        ("/v1/completions", {"model": MODEL, "prompt": PROMPT, "temperature": "hot"}, "temperature"),
        ("/v1/completions", {"model": MODEL, "prompt": PROMPT, "stop": [""]}, "stop"),
        ("/v1/completions", {"model": MODEL, "prompt": ["a", 1]}, None),
        ("/v1/completions", {"model": MODEL, "prompt": "word " * MAX_LENGTH}, None),  # prompt too long
        ("/v1/completions", {"model": MODEL, "prompt": PROMPT, "max_tokens": MAX_LENGTH}, None),  # no room
        ("/v1/completions", {"model": MODEL, "prompt": [10 ** 9]}, None),  # outside the vocabulary
    ]
    for path, body, param in cases:
        status, answer, _ = http(url + path, body)
        assert status == 400, (body, answer)
        assert_openai_error(answer, param)
    status, answer, _ = http(f"{url}/v1/completions", raw=b'{"model": "tiny", "prompt": ')
    assert status == 400 and answer["error"]["code"] == "invalid_json"
    assert_openai_error(answer)
    status, answer, _ = http(f"{url}/v1/no-such-endpoint")
    assert status == 404
    assert_openai_error(answer)


def test_adapters_under_the_root_load_at_run_time_and_on_demand(engine, adapter_dirs, expected, tmp_path):
    root = tmp_path / "adapters"
    root.mkdir()
    shutil.copytree(adapter_dirs["down-2"], root / "down-copy")
    config = ServerConfig(lora_root=str(root), allow_runtime_lora=True)
    with http_server(engine, MODEL, config) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)

        def served():
            return {m["id"]: m["parent"] for m in http(f"{url}/v1/models")[1]["data"]}

        # served by name from the root as soon as the server starts (a pool slot is taken on first use)
        assert served()["down-copy"] == MODEL and not engine.loras(MODEL)["down-copy"]["loaded"]
        text = client.completions.create(model="down-copy", prompt=PROMPT, max_tokens=NEW).choices[0].text
        assert text == expected["down-2"] and engine.loras(MODEL)["down-copy"]["loaded"]
        # a directory added while serving is served on first request
        shutil.copytree(adapter_dirs["o-8"], root / "late")
        text = client.completions.create(model="late", prompt=PROMPT, max_tokens=NEW).choices[0].text
        assert text == expected["o-8"] and served()["late"] == MODEL

        # runtime loads: by name (<root>/<name>) or by a path inside the root; nothing outside it
        shutil.copytree(adapter_dirs["mlp-6"], root / "team" / "mlp")
        status, answer, _ = http(f"{url}/v1/load_lora_adapter", {"lora_name": "mlp", "lora_path": "team/mlp"})
        assert status == 200 and answer["rank"] == 6 and answer["loaded"], answer
        text = client.completions.create(model="mlp", prompt=PROMPT, max_tokens=NEW).choices[0].text
        assert text == expected["mlp-6"]
        (root / "escape").symlink_to(adapter_dirs["all-8"])
        for body in ({"lora_name": "x", "lora_path": "../../etc"}, {"lora_name": "x", "lora_path": "/etc"},
                     {"lora_name": "x", "lora_path": adapter_dirs["all-8"]}, {"lora_name": "escape"},
                     {"lora_name": "x", "lora_path": "team/../../outside"}):
            status, answer, _ = http(f"{url}/v1/load_lora_adapter", body)
            assert status == 400, (body, answer)
            assert_openai_error(answer, "lora_path")
            assert "x" not in served() and "escape" not in served()
        status, answer, _ = http(f"{url}/v1/load_lora_adapter", {"lora_name": "ghost"})  # no such directory
        assert status == 400 and "ghost" not in served()
        assert_openai_error(answer, "lora_path")
        status, answer, _ = http(f"{url}/v1/load_lora_adapter", {"lora_name": "mlp", "lora_path": "down-copy"})
        assert status == 409  # the name is taken by another directory
        assert_openai_error(answer)

        status, _, _ = http(f"{url}/v1/unload_lora_adapter", {"lora_name": "mlp"})
        assert status == 200 and "mlp" not in served()
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="mlp", prompt=PROMPT, max_tokens=NEW)
        status, answer, _ = http(f"{url}/v1/unload_lora_adapter", {"lora_name": "mlp"})
        assert status == 404
        assert_openai_error(answer, "lora_name")
    for name in ("down-copy", "late"):  # the module's engine goes on with the adapters it had
        engine.unload_lora(MODEL, name)


def test_full_queue_is_429_and_admitted_requests_finish(engine, model_dir, tok):
    """One running row and one waiting place: of three requests, the third is refused."""
    engine.install_model(RuntimeConfigBuilder("tiny-q", model=model_dir).max_batch(1).max_length(64)
                         .max_queue(1).lora_max_num(1).lora_max_rank(8).warmup(False).build())
    try:
        engine.start_model("tiny-q")
        new = 64 - len(tok(PROMPT)["input_ids"])  # long enough that nothing ends before the third request
        status, ids = engine.sync_request("tiny-q", PROMPT, {"max_new_tokens": new})
        want = tok.decode(ids, skip_special_tokens=True)
        with http_server(engine, "tiny-q") as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
            # the server answers a stream's headers once the request is admitted: both hold a place now
            streams = [client.completions.create(model="tiny-q", prompt=PROMPT, max_tokens=new, stream=True)
                       for _ in range(2)]
            with pytest.raises(openai.RateLimitError) as err:
                client.completions.create(model="tiny-q", prompt=PROMPT, max_tokens=new)
            assert err.value.status_code == 429 and err.value.response.headers["retry-after"] == "1"
            assert err.value.body["code"] == "queue_full"
            for stream in streams:
                chunks = list(stream)
                assert "".join(c.choices[0].text for c in chunks) == want
                assert chunks[-1].choices[0].finish_reason == "length"
    finally:
        engine.uninstall_model("tiny-q")


def test_incremental_text_holds_back_partial_characters_and_stop_prefixes(tok):
    text = "Hi wörld 你好 😀!\n\nThe end"
    ids = tok(text)["input_ids"]
    assert any(tok.decode(ids[:n]).endswith("\ufffd") for n in range(1, len(ids))), "no split character to test"

    pieces, decoder = [], IncrementalText(tok, stop=[])
    for token in ids:
        pieces.append(decoder.add([token]))
    pieces.append(decoder.finish())
    assert "".join(pieces) == text and not any("\ufffd" in piece for piece in pieces)

    pieces, decoder = [], IncrementalText(tok, stop=["\n\n"])
    for token in ids:
        pieces.append(decoder.add([token]))
        if decoder.stopped:
            break
    pieces.append(decoder.finish())
    assert "".join(pieces) == "Hi wörld 你好 😀!" and not any("\n" in piece for piece in pieces)


def test_cli_help_and_bad_lora_argument():
    command = [sys.executable, "-m", "mindformers.serving"]
    runs = [subprocess.Popen(command + args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for args in (["--help"], ["--model", "smollm2_135m_instruct", "--lora", "lora-1"])]
    (help_out, _), (_, bad_err) = [run.communicate(timeout=120) for run in runs]
    assert runs[0].returncode == 0 and "--lora NAME=PATH" in help_out and "--served-model-name" in help_out
    assert runs[1].returncode == 2 and "expected name=path" in bad_err and "'lora-1'" in bad_err


# ------------------------------------------------------------------------------ security, limits, metrics


def test_api_key_guards_v1_but_not_health_or_metrics(engine, expected):
    with http_server(engine, MODEL, ServerConfig(api_key="sk-test")) as url:
        good = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0)
        text = good.completions.create(model="qv-4", prompt=PROMPT, max_tokens=NEW).choices[0].text
        assert text == expected["qv-4"]
        with pytest.raises(openai.AuthenticationError) as err:
            openai.OpenAI(base_url=f"{url}/v1", api_key="sk-wrong", max_retries=0).models.list()
        assert err.value.status_code == 401 and err.value.body["code"] == "invalid_api_key"
        status, answer, headers = http(f"{url}/v1/completions", {"model": MODEL, "prompt": PROMPT})
        assert status == 401 and "Authorization: Bearer" in answer["error"]["message"]
        assert headers["www-authenticate"] == "Bearer"
        assert_openai_error(answer)
        status, _, _ = http(f"{url}/v1/models", headers={"Authorization": "Bearer sk-test-but-longer"})
        assert status == 401
        assert http(f"{url}/health")[0] == 200
        with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
            assert response.status == 200
            assert (f'mindformers_request_errors_total{{code="invalid_api_key",model="{MODEL}",status="401"}} 3.0'
                    in response.read().decode())
    with pytest.raises(ValueError, match="api_key must be a non-empty string"):
        ServerConfig(api_key=" ")


def test_runtime_adapter_loading_is_off_unless_allowed(url, adapter_dirs):
    for path, body in (("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": adapter_dirs["o-8"]}),
                       ("/v1/unload_lora_adapter", {"lora_name": "qv-4"})):
        status, answer, _ = http(url + path, body)
        assert status == 403 and answer["error"]["code"] == "runtime_lora_disabled", answer
        assert "--allow-runtime-lora" in answer["error"]["message"]
    assert "x" not in http(f"{url}/v1/models")[1]["data"]
    with pytest.raises(ValueError, match="allow_runtime_lora needs lora_root"):
        ServerConfig(allow_runtime_lora=True)


def test_limits_answer_4xx_with_a_message(engine, tok):
    config = ServerConfig(max_body_bytes=2000, max_prompt_tokens=8, max_tokens=20)
    with http_server(engine, MODEL, config) as url:
        status, answer, _ = http(f"{url}/v1/completions", {"model": MODEL, "prompt": "x" * 3000})
        assert status == 413 and answer["error"]["code"] == "request_too_large" and "2000" in answer["error"]["message"]
        assert_openai_error(answer)

        def chunks():  # no Content-Length: refused once 2000 bytes have arrived
            yield b'{"model": "tiny", "prompt": "'
            for _ in range(30):
                yield b"y" * 100
            yield b'"}'

        request = urllib.request.Request(f"{url}/v1/completions", data=chunks(), method="POST",
                                         headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=60)
        assert err.value.code == 413
        assert_openai_error(json.loads(err.value.read()))

        long_prompt = "one two three four five six seven eight nine ten"
        assert len(tok(long_prompt)["input_ids"]) > 8
        status, answer, _ = http(f"{url}/v1/completions", {"model": MODEL, "prompt": long_prompt})
        assert status == 400 and answer["error"]["code"] == "prompt_too_long", answer
        assert "at most 8" in answer["error"]["message"]
        status, answer, _ = http(f"{url}/v1/completions", {"model": MODEL, "prompt": list(range(9))})
        assert status == 400 and answer["error"]["param"] == "prompt"
        status, answer, _ = http(f"{url}/v1/completions", {"model": MODEL, "prompt": PROMPT, "max_tokens": 21})
        assert status == 400 and answer["error"]["param"] == "max_tokens" and "at most 20" in answer["error"]["message"]
        status, answer, _ = http(f"{url}/v1/completions", {"model": MODEL, "prompt": PROMPT, "stop": ["a"] * 5})
        assert status == 400 and answer["error"]["param"] == "stop"
        status, answer, _ = http(f"{url}/v1/completions", {"model": MODEL, "prompt": PROMPT, "max_tokens": 20})
        assert status == 200 and answer["usage"]["completion_tokens"] == 20
        with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
            assert (f'mindformers_request_errors_total{{code="request_too_large",model="{MODEL}",status="413"}} 2.0'
                    in response.read().decode())  # one refused by its Content-Length, one while sent in chunks


def test_request_timeout_stops_the_request(engine):
    before = engine.metrics(MODEL)["adapters"]["base"]
    with http_server(engine, MODEL, ServerConfig(request_timeout=1e-6)) as url:
        status, answer, headers = http(f"{url}/v1/completions", {"model": MODEL, "prompt": PROMPT, "max_tokens": 100})
        assert status == 408 and answer["error"]["code"] == "request_timeout", answer
        assert headers["x-should-retry"] == "false"  # the openai client would retry a 408 otherwise
        assert_openai_error(answer)
        body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 100, "stream": True}
        request = urllib.request.Request(f"{url}/v1/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            events = [line[len("data: "):] for line in response.read().decode().splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "request_timeout"
    deadline = time.time() + 30  # both requests were released (interrupted), none still decodes
    while engine.metrics(MODEL)["running"] and time.time() < deadline:
        time.sleep(0.05)
    after = engine.metrics(MODEL)["adapters"]["base"]
    assert after["interrupted"] - before["interrupted"] == 2 and engine.metrics(MODEL)["running"] == 0


def test_prometheus_metrics_count_requests_and_latencies(engine):
    from prometheus_client.parser import text_string_to_metric_families

    with http_server(engine, MODEL) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        for model in (MODEL, MODEL, "o-8"):
            client.completions.create(model=model, prompt=PROMPT, max_tokens=NEW)
        list(client.completions.create(model="o-8", prompt=PROMPT, max_tokens=NEW, stream=True))
        http(f"{url}/v1/completions", {"model": "nope", "prompt": PROMPT})
        with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
            assert response.headers["content-type"].startswith("text/plain")
            text = response.read().decode()
        json_metrics = http(f"{url}/metrics/json")[1]
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value

    def value(name, **labels):
        return samples[(name, tuple(sorted({"model": MODEL, **labels}.items())))]

    for adapter in ("base", "o-8"):  # the engine's counters, per adapter, as the JSON has them
        counts = json_metrics["adapters"][adapter]
        assert value("mindformers_requests_total", adapter=adapter) == counts["requests"]
        assert value("mindformers_generation_tokens_total", adapter=adapter) == counts["completion_tokens"]
        assert value("mindformers_prompt_tokens_total", adapter=adapter) == counts["prompt_tokens"]
        # this server's histograms saw two requests of each
        assert value("mindformers_time_to_first_token_seconds_count", adapter=adapter) == 2
        assert value("mindformers_e2e_request_latency_seconds_count", adapter=adapter) == 2
        assert 0 < value("mindformers_time_per_output_token_seconds_count", adapter=adapter) <= 2 * (NEW - 1)
        assert value("mindformers_time_to_first_token_seconds_sum", adapter=adapter) > 0
    assert value("mindformers_requests_running") == 0 and value("mindformers_requests_waiting") == 0
    assert value("mindformers_request_errors_total", status="404", code="model_not_found") == 1
    decode = json_metrics["decode"]  # the engine's decode steps, as the JSON has them
    assert value("mindformers_decode_steps_total") == decode["steps"] > 0
    assert value("mindformers_decode_tokens_total") == decode["tokens"] >= decode["steps"]
    assert value("mindformers_decode_seconds_total") == pytest.approx(decode["seconds"]) and decode["seconds"] > 0


# ------------------------------------------------------------------------------------------- fuzzing

FUZZ_KEY = "sk-fuzz"
FUZZ_EXAMPLES = 25  # per operation


@pytest.fixture(scope="module")
def fuzz_url(engine, adapter_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_root")
    shutil.copytree(adapter_dirs["qv-4"], root / "fuzz-a")  # for load_lora_adapter {"lora_name": "fuzz-a"}
    config = ServerConfig(api_key=FUZZ_KEY, max_tokens=8, max_body_bytes=64 * 1024, lora_root=str(root),
                          allow_runtime_lora=True)
    with http_server(engine, MODEL, config) as base_url:
        yield base_url


def openai_error_shape(ctx, response, case):  # pylint: disable=unused-argument
    """A schemathesis check: every 4xx has OpenAI's error body."""
    if 400 <= response.status_code < 500:
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"], body


def test_fuzzed_requests_never_crash_the_server(fuzz_url):
    """Requests generated from the server's OpenAPI schema (valid and invalid ones), with and without the
    key: never a 5xx, every 4xx in OpenAI's shape. (schemathesis' pytest plugin does not run on pytest 9,
    so each operation's strategy runs under hypothesis here.)"""
    schema = schemathesis.openapi.from_url(f"{fuzz_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/completions", "POST /v1/chat/completions",
                                                "POST /v1/load_lora_adapter", "GET /v1/models"}
    calls, statuses = collections.Counter(), collections.Counter()
    for operation in operations:
        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=True,
                             suppress_health_check=list(hypothesis.HealthCheck))
        def call(case):
            n = calls[operation.label]
            calls[operation.label] += 1
            keyed = n % 4 != 3  # one call in four without the key
            if isinstance(case.body, dict) and isinstance(case.body.get("model"), str) and n % 2 == 0:
                case.body["model"] = [MODEL, *ADAPTER_NAMES][n // 2 % 9]  # a served model: reach generation
            if isinstance(case.body, dict) and isinstance(case.body.get("lora_name"), str) and n % 3 == 0:
                case.body["lora_name"] = "fuzz-a"  # a name that resolves to an adapter under the root
            statuses[response_class(case.call_and_validate(
                base_url=fuzz_url, timeout=60, headers={"Authorization": f"Bearer {FUZZ_KEY}"} if keyed else None,
                checks=[schemathesis.checks.not_a_server_error, openai_error_shape]).status_code)] += 1

        call()  # pylint: disable=no-value-for-parameter
    assert all(calls[op.label] > 0 for op in operations), calls
    assert statuses["2xx"] and statuses["4xx"] and set(statuses) <= {"2xx", "4xx"}, statuses  # both kinds reached


def response_class(status: int) -> str:
    return f"{status // 100}xx"


def test_server_healthy_after_fuzzing(fuzz_url, engine, expected):
    assert http(f"{fuzz_url}/health")[:2] == (200, {"status": "ok"})
    deadline = time.time() + 60  # every fuzzed request was released
    while (engine.metrics(MODEL)["running"] or engine.metrics(MODEL)["waiting"]) and time.time() < deadline:
        time.sleep(0.05)
    assert engine.metrics(MODEL)["running"] == 0 and engine.metrics(MODEL)["waiting"] == 0
    client = openai.OpenAI(base_url=f"{fuzz_url}/v1", api_key=FUZZ_KEY, max_retries=0)
    assert client.completions.create(model="all-8", prompt=PROMPT, max_tokens=8).choices[0].text \
        == client.completions.create(model="all-8", prompt=PROMPT, max_tokens=8).choices[0].text


def test_adapter_paths_stay_inside_the_root(tmp_path):
    from mindformers.serving.security import adapter_path, adapters_under

    root, outside = tmp_path / "root", tmp_path / "outside"
    for folder in (root / "a1", root / "team" / "a2", outside / "secret", root / "no-config"):
        folder.mkdir(parents=True)
    for folder in (root / "a1", root / "team" / "a2", outside / "secret"):
        (folder / "adapter_config.json").write_text("{}")
    (root / "escape").symlink_to(outside / "secret")
    (root / "inner").symlink_to(root / "a1")
    real_root = os.path.realpath(root)
    assert adapter_path(str(root), "a1") == os.path.join(real_root, "a1")
    assert adapter_path(str(root), "team/a2") == os.path.join(real_root, "team", "a2")
    assert adapter_path(str(root), str(root / "a1")) == os.path.join(real_root, "a1")  # absolute, inside
    assert adapter_path(str(root), "inner") == os.path.join(real_root, "a1")  # a link that stays inside
    for bad, why in (("../outside/secret", "'..'"), ("a1/../../outside", "'..'"), ("../../etc", "'..'"),
                     (str(outside / "secret"), "outside the adapter root"), ("/etc", "outside the adapter root"),
                     ("escape", "outside the adapter root"), ("", "non-empty")):
        with pytest.raises(ServingError, match=why) as err:
            adapter_path(str(root), bad)
        assert err.value.code is StatusCode.INVALID_REQUEST
    # served by name: directories right under the root with an adapter_config.json, links out skipped
    assert adapters_under(str(root)) == {"a1": os.path.join(real_root, "a1"), "inner": os.path.join(real_root, "a1")}
