"""ServeSettings: what one server accepts and how it batches."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import ConfigError


@dataclass(frozen=True)
class ServeSettings:
    engine: str = "auto"  # auto, torch or onnxruntime (deploy.engines)
    device: str = "cpu"
    max_batch: int = 32  # images per forward pass
    max_wait_ms: float = 5.0  # how long the first image of a batch waits for others
    max_queue: int = 256  # images waiting; beyond it a request gets 503 with Retry-After
    decode_threads: int = 2  # images decoded and preprocessed in parallel
    max_bytes: int = 20 * 1024 * 1024  # per image
    max_pixels: int = 50_000_000  # per image (width x height, read from the header before decoding)
    max_images: int = 64  # per request

    def __post_init__(self):
        if self.max_queue < self.max_images:  # else a full request could never be queued, even on an idle server
            raise ConfigError(f"--max-queue ({self.max_queue}) is below --max-images ({self.max_images}): a request "
                              f"that large could never be served; raise --max-queue or lower --max-images")
