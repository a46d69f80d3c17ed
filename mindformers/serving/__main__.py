"""Serve a model and its LoRA adapters over an OpenAI-compatible HTTP API.

Usage::

    python -m mindformers.serving --model smollm2_135m_instruct \\
        --lora lora-1=/path/to/adapter1 --lora lora-2=/path/to/adapter2 --port 8000

    curl http://127.0.0.1:8000/v1/models
    curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
        -d '{"model": "lora-1", "prompt": "Once upon a time", "max_tokens": 32}'

``--model`` is a preset name or a model directory; requests name the base model by ``--served-model-name``
(default: the ``--model`` value, or the directory's name) and an adapter by its ``--lora`` name. Adapters
can also be loaded and unloaded while serving (``POST /v1/load_lora_adapter``, ``/v1/unload_lora_adapter``).
See ``server.py`` for the endpoints.
"""
import argparse
import os
import sys
import time
from typing import List, Optional, Tuple


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
    parser.add_argument("--max-queue", type=int, default=64, help="requests waiting for a free row; more get 429")
    parser.add_argument("--log-level", default="info", help="uvicorn's log level")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    from . import Engine, RuntimeConfigBuilder, ServingError
    from .server import serve

    name = args.served_model_name or os.path.basename(os.path.normpath(args.model))
    config = (RuntimeConfigBuilder(name, model=args.model).max_batch(args.max_batch).max_length(args.max_length)
              .lora_max_num(args.lora_max_num).lora_max_rank(args.lora_max_rank).max_queue(args.max_queue).build())
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
    print(f"serving {name} with adapters {sorted(engine.loras(name))} at http://{args.host}:{args.port}/v1", flush=True)
    try:
        serve(engine, name, args.host, args.port, args.log_level)
    finally:
        engine.uninstall_model(name)


if __name__ == "__main__":
    main()
