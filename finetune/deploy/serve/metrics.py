"""Prometheus metrics of one server (a registry of its own, not the process-wide default)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("finetune_requests", "POST /predict requests by outcome", ["outcome"], registry=r)
        self.images = Counter("finetune_images", "Images classified", registry=r)
        self.latency = Histogram("finetune_request_seconds", "POST /predict latency", registry=r,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.batch_size = Histogram("finetune_batch_size", "Images per forward pass", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.batch_seconds = Histogram("finetune_batch_seconds", "Forward pass time", registry=r)

    def request(self, outcome: str, images: int = 0, seconds: float | None = None) -> None:
        self.requests.labels(outcome).inc()
        self.images.inc(images)
        if seconds is not None:
            self.latency.observe(seconds)

    def batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
