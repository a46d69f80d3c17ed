"""Load and soak a running server: many concurrent clients across adapters, every answer checked.

Each client loops until the time is up, sending a greedy completion for a (model, prompt) pair it draws:
blocking, streamed, or streamed and abandoned after its first chunk (a client that goes away). Every answer
that runs to its end must equal the answer to the same request sent alone (the references, taken first,
one at a time); the server must account for every request it admitted (finished or interrupted, none left
running); the server process' memory is sampled throughout and its slope reported::

    python -m mindformers.serving.soak --url http://127.0.0.1:8000 --models base-name,lora-1,lora-2 \\
        --clients 64 --duration 120 --pid <server pid>

Only the standard library is used on the client side (threads and urllib), so the clients cost little
next to the server they load.
"""
import argparse
import dataclasses
import json
import random
import threading
import time
import urllib.error
import urllib.request
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

PROMPTS = ("Once upon a time", "The capital of France is", "def fibonacci(n):", "My favourite food is",
           "In the year 2050,", "Dear diary, today", "The best way to learn is", "Roses are red,")


@dataclasses.dataclass
class SoakReport:
    """What a soak run saw. Latencies are in seconds; memory in MB."""

    seconds: float
    requests: int = 0
    blocking: int = 0
    streamed: int = 0
    abandoned: int = 0
    mismatched: List[str] = dataclasses.field(default_factory=list)
    """Answers that differ from the same request sent alone (model, prompt, got, expected)."""
    failed: List[str] = dataclasses.field(default_factory=list)
    """Requests answered with an error or broken off by the server."""
    lost: int = 0
    """Requests the server admitted but neither finished nor interrupted once the run settled."""
    first_token: List[float] = dataclasses.field(default_factory=list)
    latency: List[float] = dataclasses.field(default_factory=list)
    rss: List[Tuple[float, float]] = dataclasses.field(default_factory=list)
    """(seconds since start, RSS MB) of the server process."""

    @property
    def ok(self) -> bool:
        return not self.mismatched and not self.failed and not self.lost

    def rss_slope(self) -> Optional[float]:
        """MB per minute over the run after its first fifth (start-up allocations excluded)."""
        points = [(t, m) for t, m in self.rss if t >= self.seconds / 5]
        if len(points) < 3:
            return None
        t, m = np.array(points).T
        return float(np.polyfit(t / 60.0, m, 1)[0])

    def summary(self) -> str:
        def pct(values: List[float], q: float) -> str:
            return f"{np.percentile(values, q):.3f}" if values else "-"

        slope = self.rss_slope()
        lines = [
            f"soak: {self.requests} requests in {self.seconds:.0f} s ({self.blocking} blocking, {self.streamed} "
            f"streamed, {self.abandoned} abandoned mid-stream); mismatched {len(self.mismatched)}, failed "
            f"{len(self.failed)}, lost {self.lost}",
            f"  time to first token p50 {pct(self.first_token, 50)} s, p99 {pct(self.first_token, 99)} s; request "
            f"p50 {pct(self.latency, 50)} s, p99 {pct(self.latency, 99)} s",
        ]
        if self.rss:
            lines.append(f"  server RSS {self.rss[0][1]:.0f} -> {self.rss[-1][1]:.0f} MB (max "
                         f"{max(m for _, m in self.rss):.0f}), slope "
                         f"{'-' if slope is None else f'{slope:+.1f}'} MB/min after the first fifth")
        lines += [f"  mismatch: {m}" for m in self.mismatched[:5]] + [f"  failure: {f}" for f in self.failed[:5]]
        return "\n".join(lines)


class _Client:
    """The HTTP side of one request (urllib; one connection per request)."""

    def __init__(self, url: str, api_key: Optional[str], timeout: float):
        self.url, self.timeout = url.rstrip("/"), timeout
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    def open(self, body: dict):
        request = urllib.request.Request(f"{self.url}/v1/completions", data=json.dumps(body).encode(),
                                         headers=self.headers)
        return urllib.request.urlopen(request, timeout=self.timeout)

    def get(self, path: str) -> dict:
        request = urllib.request.Request(self.url + path, headers=self.headers)
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.loads(response.read())


def _body(model: str, prompt: str, max_tokens: int, stream: bool) -> dict:
    return {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": stream}


def references(url: str, models: Sequence[str], prompts: Sequence[str], max_tokens: int,
               api_key: Optional[str] = None, timeout: float = 600.0) -> Dict[Tuple[str, str], str]:
    """The answer to each (model, prompt) sent alone, one request at a time."""
    client = _Client(url, api_key, timeout)
    out = {}
    for model in models:
        for prompt in prompts:
            with client.open(_body(model, prompt, max_tokens, False)) as response:
                out[model, prompt] = json.loads(response.read())["choices"][0]["text"]
    return out


def _stream_text(response, report: SoakReport, start: float, abandon: bool) -> Optional[str]:
    """Read a completion stream; None if abandoned after the first chunk (or ended without [DONE])."""
    pieces = []
    for raw in response:
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            return "".join(pieces)
        chunk = json.loads(data)
        if "error" in chunk:
            raise RuntimeError(f"error event: {chunk['error']}")
        if not pieces:
            report.first_token.append(time.perf_counter() - start)
        pieces.append(chunk["choices"][0]["text"])
        if abandon:
            return None
    raise RuntimeError("the stream ended without [DONE]")


def _settled(client: _Client, timeout: float = 60.0) -> dict:
    """The engine's counters once no request runs or waits (abandoned streams are released by then)."""
    deadline = time.monotonic() + timeout
    while True:
        counters = client.get("/metrics/json")
        if (counters["running"] == 0 and counters["waiting"] == 0) or time.monotonic() > deadline:
            return counters
        time.sleep(0.1)


def _admitted(counters: dict) -> Tuple[int, int]:
    """(requests admitted, requests finished or interrupted) over every adapter."""
    rows = counters["adapters"].values()
    return sum(r["requests"] for r in rows), sum(r["finished"] + r["interrupted"] for r in rows)


def run(url: str, models: Sequence[str], prompts: Sequence[str] = PROMPTS, clients: int = 64, duration: float = 60.0,
        max_tokens: int = 16, stream_fraction: float = 0.5, abandon_fraction: float = 0.125,
        api_key: Optional[str] = None, pid: Optional[int] = None, seed: int = 0,
        reference: Optional[Dict[Tuple[str, str], str]] = None) -> SoakReport:
    """Load the server at ``url`` with ``clients`` concurrent clients for ``duration`` seconds.

    Args:
        url: the server's base URL (``http://host:port``).
        models: the ``model`` names to spread requests over (the base model and adapters).
        prompts: the prompts to draw from.
        clients: concurrent clients (threads), each with one request in flight at a time.
        duration: seconds during which clients start new requests (running ones are finished after).
        max_tokens: new tokens per request (greedy decoding).
        stream_fraction: share of requests that stream.
        abandon_fraction: share of requests that stream and disconnect after the first chunk.
        api_key: sent as ``Authorization: Bearer``.
        pid: the server's process id, to sample its RSS (psutil); None: no memory figures.
        seed: draws of (model, prompt, mode) per client.
        reference: answers of each request alone (default: taken first with :func:`references`).

    Returns:
        A :class:`SoakReport`; ``report.ok`` when nothing mismatched, failed or was lost.
    """
    reference = reference or references(url, models, prompts, max_tokens, api_key)
    client = _Client(url, api_key, timeout=max(600.0, duration * 4))
    admitted_before, ended_before = _admitted(_settled(client))
    report = SoakReport(seconds=duration)
    lock, stop = threading.Lock(), threading.Event()
    start = time.perf_counter()

    def sample_memory():
        import psutil

        process = psutil.Process(pid)
        while not stop.is_set():
            report.rss.append((time.perf_counter() - start, process.memory_info().rss / 2 ** 20))
            stop.wait(0.5)

    def work(index: int):
        rng = random.Random(seed * 100003 + index)
        while time.perf_counter() - start < duration:
            model, prompt = rng.choice(models), rng.choice(prompts)
            draw = rng.random()
            abandon = draw < abandon_fraction
            stream = abandon or draw < abandon_fraction + stream_fraction
            began = time.perf_counter()
            try:
                with client.open(_body(model, prompt, max_tokens, stream)) as response:
                    text = (_stream_text(response, report, began, abandon) if stream
                            else json.loads(response.read())["choices"][0]["text"])
            except (urllib.error.URLError, OSError, RuntimeError, ValueError) as err:
                detail = err.read().decode()[:200] if isinstance(err, urllib.error.HTTPError) else err
                with lock:
                    report.requests += 1
                    report.failed.append(f"{model!r} {prompt!r}: {detail}")
                continue
            with lock:
                report.requests += 1
                if abandon:
                    report.abandoned += 1
                    continue
                report.latency.append(time.perf_counter() - began)
                if stream:
                    report.streamed += 1
                else:
                    report.blocking += 1
                if text != reference[model, prompt]:
                    report.mismatched.append(f"{model!r} {prompt!r}: {text!r} != {reference[model, prompt]!r}")

    sampler = threading.Thread(target=sample_memory, daemon=True) if pid is not None else None
    if sampler is not None:
        sampler.start()
    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report.seconds = time.perf_counter() - start
    stop.set()
    if sampler is not None:
        sampler.join()
    admitted, ended = _admitted(_settled(client))
    report.lost = (admitted - admitted_before) - (ended - ended_before)
    if admitted - admitted_before != report.requests - len(report.failed):
        report.failed.append(f"the server admitted {admitted - admitted_before} requests, the clients sent "
                             f"{report.requests - len(report.failed)} that were answered")
    return report


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mindformers.serving.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--models", required=True, help="comma-separated model names (base model, adapters)")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--pid", type=int, default=None, help="server process id, to sample its memory")
    args = parser.parse_args(argv)
    report = run(args.url, args.models.split(","), clients=args.clients, duration=args.duration,
                 max_tokens=args.max_tokens, api_key=args.api_key, pid=args.pid)
    print(report.summary())
    raise SystemExit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
