"""Prometheus metrics for one app: its own registry, so several apps in one process (tests)
never share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("builder_requests_total", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("builder_request_seconds", "HTTP request latency by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.inference = Histogram("builder_inference_seconds", "Model inference time", buckets=LATENCY_BUCKETS,
                                   registry=self.registry)
        self.queue_depth = Gauge("builder_queue_depth", "Requests waiting for the model", registry=self.registry)
        self.in_flight = Gauge("builder_inferences_in_flight", "Inferences running (at most 1)", registry=self.registry)
        self.load_seconds = Gauge("builder_model_load_seconds", "Seconds the model took to load", registry=self.registry)
        self.ready = Gauge("builder_model_ready", "1 once the model is loaded, 0 before or after a failure",
                           registry=self.registry)
        self.gpu_allocated = Gauge("builder_gpu_memory_allocated_bytes", "CUDA memory allocated by tensors",
                                   registry=self.registry)
        self.gpu_peak = Gauge("builder_gpu_memory_peak_bytes", "Peak CUDA memory allocated", registry=self.registry)

    def render(self, device: str | None) -> bytes:
        if device == "cuda":
            import torch

            self.gpu_allocated.set(torch.cuda.memory_allocated())
            self.gpu_peak.set(torch.cuda.max_memory_allocated())
        return generate_latest(self.registry)
