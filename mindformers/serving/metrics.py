"""The server's ``/metrics`` in Prometheus' text format (https://prometheus.io/docs/instrumenting/exposition_formats/).

Two sources, one registry per app (so several servers in one process never share counts):

- the engine's own counters (:meth:`Engine.metrics`), read at each scrape: requests admitted / finished /
  interrupted, prompt and generated tokens per adapter, running rows and queue depth, and the adapter
  cache's hits, misses, evictions and load time when the engine reports them;
- latencies the server measures per request, as histograms per adapter: time to first token (from the
  request's arrival, so it includes tokenization and queueing, as a client sees it), time per output token
  (each interval between token arrivals, divided over the tokens that arrived) and the whole request.

Names follow vLLM's where they mean the same (``..._time_to_first_token_seconds``, ...) with the prefix
``mindformers_``. The engine's JSON stays at ``/metrics/json``.
"""
import time
from typing import Any, Dict, Optional

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "mindformers_"
# engine counter key -> (metric name, help); per adapter
ENGINE_COUNTERS = {
    "requests": ("requests", "Requests admitted."),
    "finished": ("requests_finished", "Requests that ended at end-of-sequence, a stop string or a length limit."),
    "interrupted": ("requests_interrupted", "Requests released before their end (client gone, stop, timeout)."),
    "prompt_tokens": ("prompt_tokens", "Prompt tokens of admitted requests."),
    "completion_tokens": ("generation_tokens", "Tokens generated."),
    "hits": ("lora_hits", "Requests whose adapter was in a pool slot when they arrived."),
    "misses": ("lora_misses", "Requests whose adapter had to be loaded into a pool slot."),
    "evictions": ("lora_evictions", "Times the adapter was evicted from its pool slot."),
    "loads": ("lora_loads", "Times the adapter was loaded into a pool slot."),
    "load_seconds": ("lora_load_seconds", "Seconds spent loading the adapter into a pool slot (read + write)."),
}
# engine key (``pool.<key>``: of its adapter pool) -> (metric name, help); gauges of the model
ENGINE_GAUGES = {
    "running": ("requests_running", "Requests decoding in the running batch."),
    "waiting": ("requests_waiting", "Requests waiting for a row (queue depth)."),
    "pool.resident": ("lora_resident", "Adapters in pool slots."),
    "pool.known": ("lora_known", "Adapters the server can serve (registered or under --lora-root)."),
    "pool.slots": ("lora_slots", "Slots of the adapter pool."),
    "pool.loading": ("lora_loading", "Adapters being read for waiting requests."),
}
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)


class _EngineCollector:
    """Turns ``engine.metrics(model)`` into Prometheus families at each scrape."""

    def __init__(self, engine: Any, model_name: str):
        self.engine, self.model_name = engine, model_name

    def collect(self):
        data = self.engine.metrics(self.model_name)
        for key, (name, doc) in ENGINE_GAUGES.items():
            section, _, field = key.rpartition(".")
            value = (data.get(section, {}) if section else data).get(field)
            if isinstance(value, (int, float)):
                family = GaugeMetricFamily(PREFIX + name, doc, labels=["model"])
                family.add_metric([self.model_name], value)
                yield family
        adapters: Dict[str, Dict[str, float]] = data.get("adapters", {})
        for key, (name, doc) in ENGINE_COUNTERS.items():
            rows = [(adapter, values[key]) for adapter, values in adapters.items() if key in values]
            if rows:
                family = CounterMetricFamily(PREFIX + name, doc, labels=["model", "adapter"])
                for adapter, value in rows:
                    family.add_metric([self.model_name, adapter], value)
                yield family


class ServerMetrics:
    """The Prometheus registry of one app: the engine's counters and the server's latency histograms.

    Args:
        engine: the :class:`~mindformers.serving.Engine`.
        model_name: the served model (the ``model`` label).
    """

    def __init__(self, engine: Any, model_name: str):
        self.model_name = model_name
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_EngineCollector(engine, model_name))
        labels = ["model", "adapter"]
        self.first_token = Histogram(PREFIX + "time_to_first_token_seconds", "From a request's arrival to its "
                                     "first generated token.", labels, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.per_token = Histogram(PREFIX + "time_per_output_token_seconds", "Between generated tokens after the "
                                   "first.", labels, buckets=TOKEN_BUCKETS, registry=self.registry)
        self.request = Histogram(PREFIX + "e2e_request_latency_seconds", "From a request's arrival to its last "
                                 "token.", labels, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.errors = Counter(PREFIX + "request_errors", "Requests answered with an error, by HTTP status and "
                              "code.", ["model", "status", "code"], registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def error(self, status: int, code: Optional[str]) -> None:
        self.errors.labels(self.model_name, str(status), code or "").inc()

    def timer(self, adapter: Optional[str]) -> "RequestTimer":
        return RequestTimer(self, adapter or "base")


class RequestTimer:
    """Times one request: call :meth:`tokens` as tokens arrive and :meth:`done` at its end."""

    def __init__(self, metrics: ServerMetrics, adapter: str):
        self.metrics, self.adapter = metrics, adapter
        self.start = self.last = time.perf_counter()
        self.seen = 0

    def tokens(self, n: int) -> None:
        """``n`` tokens arrived now. The first arrival gives the time to first token (tokens that came with
        the first have no interval of their own); later ones share the interval since the previous."""
        if n <= 0:
            return
        now = time.perf_counter()
        labels = (self.metrics.model_name, self.adapter)
        if self.seen == 0:
            self.metrics.first_token.labels(*labels).observe(now - self.start)
        else:
            for _ in range(n):
                self.metrics.per_token.labels(*labels).observe((now - self.last) / n)
        self.seen += n
        self.last = now

    def done(self) -> None:
        if self.seen:
            self.metrics.request.labels(self.metrics.model_name, self.adapter).observe(time.perf_counter() - self.start)
