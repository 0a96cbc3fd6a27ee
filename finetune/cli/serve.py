"""`finetune serve`: a trained or exported model behind HTTP (deploy.serve)."""

from __future__ import annotations

import socket
from typing import Annotated

import typer

from ..errors import ConfigError, FinetuneError
from .app import app
from .boundary import command, tune
from .options import Device, Engine, EngineOpt, ModelArg


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}); is another server using it? "
                              f"Choose another with --port") from None


@app.command()
@command
def serve(
    checkpoint: ModelArg,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port to listen on.")] = 8000,
    engine: EngineOpt = Engine.auto,
    device: Device = "cpu",
    max_batch: Annotated[int, typer.Option(min=1, help="At most this many images per forward pass.")] = 32,
    max_wait_ms: Annotated[float, typer.Option(
        min=0, help="How long the first image of a batch waits for others to join it (milliseconds).")] = 5.0,
    workers: Annotated[int, typer.Option(
        min=1, help="Threads that decode and preprocess uploads while the model runs.")] = 2,
    max_queue: Annotated[int, typer.Option(
        min=1, help="Images allowed to wait for the model; beyond it a request gets 503 with Retry-After.")] = 256,
    max_images: Annotated[int, typer.Option(min=1, help="At most this many images per request (else 413).")] = 64,
    max_mb: Annotated[float, typer.Option(min=0.001, help="At most this many megabytes per image (else 413).")] = 20,
    max_megapixels: Annotated[float, typer.Option(
        min=0.001, help="At most this many megapixels per image, read from its header (else 413).")] = 50,
):
    """Serve a model over HTTP: POST /predict, GET /health, /info, /metrics, the API at /docs and a page at /."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise FinetuneError("finetune serve needs FastAPI and uvicorn: pip install 'finetune[serve]'") from None
    tune(("torch", "torchvision"))
    from ..deploy.serve.app import create_app
    from ..deploy.serve.settings import ServeSettings

    if not checkpoint.is_file():
        raise FinetuneError(f"no such model file: {checkpoint}")
    _check_port(host, port)
    settings = ServeSettings(engine=engine.value, device=device, max_batch=max_batch, max_wait_ms=max_wait_ms,
                             decode_threads=workers, max_queue=max_queue, max_images=max_images,
                             max_bytes=int(max_mb * 1024 * 1024), max_pixels=int(max_megapixels * 1_000_000))
    application = create_app(checkpoint, settings)
    typer.echo(f"finetune serve: http://{host}:{port}/ (API at /docs); Ctrl-C or SIGTERM stops it", err=True)
    uvicorn.run(application, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30)
