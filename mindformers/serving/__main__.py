"""Serve a model and its LoRA adapters over an OpenAI-compatible HTTP API.

Usage::

    python -m mindformers.serving --model smollm2_135m_instruct \\
        --lora lora-1=/path/to/adapter1 --lora lora-2=/path/to/adapter2 --port 8000

    curl http://127.0.0.1:8000/v1/models
    curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
        -d '{"model": "lora-1", "prompt": "Once upon a time", "max_tokens": 32}'

``--model`` is a preset name or a model directory; requests name the base model by ``--served-model-name``
(default: the ``--model`` value, or the directory's name) and an adapter by its ``--lora`` name, or by the
name of its directory under ``--lora-root`` (adapters beyond ``--lora-max-num`` are swapped into the pool on
demand, least recently used out). Facing a network::

    MINDFORMERS_API_KEY=sk-... python -m mindformers.serving --model smollm2_135m_instruct \
        --lora-root /srv/adapters --allow-runtime-lora --host 0.0.0.0

then every ``/v1`` request needs ``Authorization: Bearer sk-...``, and adapters may be loaded while serving
(``POST /v1/load_lora_adapter``, ``/v1/unload_lora_adapter``) from inside ``--lora-root`` only.
See ``server.py`` for the endpoints.
"""
import argparse
import os
import sys
import time
from typing import List, Optional, Tuple

from .config import LORA_DTYPES


def lora_argument(value: str) -> Tuple[str, str]:
    """``name=path`` -> (name, path), for ``--lora``."""
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected name=path (e.g. lora-1=/path/to/adapter), found {value!r}")
    return name, path


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mindformers.serving", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", required=True, help="preset name (smollm2_135m_instruct) or model directory")
    parser.add_argument("--lora", action="append", type=lora_argument, default=[], metavar="NAME=PATH",
                        help="load the adapter in directory PATH as model NAME (repeat for more adapters)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: all)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", help="the name requests use for the base model (default: --model, "
                                                    "or the directory's name)")
    parser.add_argument("--max-batch", type=int, default=8, help="requests decoded together")
    parser.add_argument("--max-length", type=int, default=512, help="longest request: prompt + new tokens")
    parser.add_argument("--lora-max-num", type=int, default=8, help="adapters loaded at once")
    parser.add_argument("--lora-max-rank", type=int, default=64, help="highest adapter rank")
    parser.add_argument("--lora-dtype", choices=LORA_DTYPES, default="float32",
                        help="how the adapter pool keeps the factors (float16: half the memory and bytes read "
                             "per step; the product stays float32)")
    parser.add_argument("--scaled-adapters", action="store_true",
                        help="serve DoRA and IA3 adapters too (a per-row scale in every adapted layer, also for "
                             "LoRA-only batches)")
    parser.add_argument("--max-queue", type=int, default=64, help="requests waiting for a free row; more get 429")
    security = parser.add_argument_group("security and limits")
    security.add_argument("--api-key", default=os.environ.get("MINDFORMERS_API_KEY"),
                          help="clients must send 'Authorization: Bearer KEY' on /v1 endpoints (default: "
                               "$MINDFORMERS_API_KEY; unset: no key)")
    security.add_argument("--lora-root", help="serve every adapter directory under this one by its name; runtime "
                                              "loads resolve paths inside it")
    security.add_argument("--allow-runtime-lora", action="store_true",
                          help="allow POST /v1/load_lora_adapter and /v1/unload_lora_adapter (needs --lora-root)")
    security.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (413 beyond)")
    security.add_argument("--max-prompt-tokens", type=int, help="longest prompt (default: what --max-length allows)")
    security.add_argument("--max-tokens", type=int, help="largest max_tokens a request may ask (default: --max-length)")
    security.add_argument("--request-timeout", type=float, default=600.0,
                          help="seconds a request may take, waiting included (0: no limit); then it stops with 408")
    parser.add_argument("--log-level", default="info", help="uvicorn's log level")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    from . import Engine, RuntimeConfigBuilder, ServingError
    from .server import ServerConfig, serve

    try:
        server_config = ServerConfig(api_key=args.api_key, lora_root=args.lora_root,
                                     allow_runtime_lora=args.allow_runtime_lora, max_body_bytes=args.max_body_bytes,
                                     max_prompt_tokens=args.max_prompt_tokens, max_tokens=args.max_tokens,
                                     request_timeout=args.request_timeout)
    except ValueError as err:
        sys.exit(f"error: {err}")
    name = args.served_model_name or os.path.basename(os.path.normpath(args.model))
    config = (RuntimeConfigBuilder(name, model=args.model).max_batch(args.max_batch).max_length(args.max_length)
              .lora_max_num(args.lora_max_num).lora_max_rank(args.lora_max_rank).scaled_adapters(args.scaled_adapters)
              .lora_dtype(args.lora_dtype)
              .max_queue(args.max_queue).build())
    engine = Engine()
    try:
        engine.install_model(config)
        print(f"compiling the prefill and decode graphs of {name} (max_batch {config.max_batch}, max_length "
              f"{config.max_length}); this takes a few seconds per graph", flush=True)
        start = time.perf_counter()
        engine.start_model(name)
        print(f"ready in {time.perf_counter() - start:.0f} s", flush=True)
        for lora_name, path in args.lora:
            engine.load_lora(name, lora_name, path)
    except ServingError as err:
        sys.exit(f"error: {err.message}")
    key = "with an API key" if server_config.api_key else "WITHOUT an API key (--api-key)"
    print(f"serving {name} {key} at http://{args.host}:{args.port}/v1", flush=True)
    try:
        serve(engine, name, args.host, args.port, args.log_level, server_config)
    finally:
        engine.uninstall_model(name)


if __name__ == "__main__":
    main()
