"""create_app(source, settings): the FastAPI application of `finetune serve`. It reads nothing and writes nothing
after start-up: the model is loaded once, uploads are decoded in memory."""

from __future__ import annotations

import asyncio
import base64
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Optional

import torch
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from ...checkpoint import Checkpoint
from ...data.transforms import eval_transform
from ...errors import FinetuneError
from ...runtime.device import resolve_device
from ..cam import Explainer
from ..cam import require as require_cam
from ..engines import ModelSource, load_source, resolve_engine
from ..predict import Prediction, make_runner, rank
from ..reject import knn_rule, resolve_reject
from .batcher import Batcher, QueueFull
from .decode import TooLarge, read_rgb
from .metrics import Metrics
from .settings import ServeSettings


class JsonImage(BaseModel):
    name: str = "image"
    data: str  # base64


class JsonRequest(BaseModel):
    images: list[JsonImage]
    top_k: int = 1
    reject: Optional[str] = None
    tta: bool = False


class LazyExplainer:
    """Grad-CAM for /cam: built on the first request (a model of its own, with gradients), run in one thread
    (pytorch-grad-cam's hooks hold one image at a time). `why_not`: why this server cannot explain, or None."""

    def __init__(self, source):
        self.source, self._explainer = source, None
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="finetune-cam")
        self.why_not = None
        if not isinstance(source, Checkpoint):
            self.why_not = "Grad-CAM follows gradients through the torch model: serve the .pt checkpoint"
        else:
            try:
                require_cam()
            except FinetuneError as exc:
                self.why_not = str(exc)

    def overlay(self, image, target: int | None) -> bytes:
        if self._explainer is None:
            self._explainer = Explainer(self.source)
        return self._explainer.overlay_rgb(image, target)


def create_app(source: ModelSource | str, settings: ServeSettings = ServeSettings()) -> FastAPI:
    from ... import __version__

    source = load_source(source)
    if source.task == "multilabel":
        raise FinetuneError("serve answers with the softmax classes of a one-class-per-image model; a multi-label "
                            "model (task multilabel) is served by `finetune predict` for now")
    engine = resolve_engine(settings.engine, source, settings.device)
    names, pre = source.class_names, source.preprocessing
    transform = eval_transform(pre)
    metrics = Metrics()
    run = make_runner(source, engine, resolve_device(settings.device) if engine == "torch" else torch.device("cpu"))
    batcher = Batcher(run, settings.max_batch, settings.max_wait_ms, settings.max_queue, on_batch=metrics.batch)
    decoders = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="finetune-decode")
    explainer = LazyExplainer(source)
    auto_score = "knn" if engine == "torch" and knn_rule(source) is not None else "probability"  # --reject auto's

    def decode(data: bytes) -> torch.Tensor:
        return transform(read_rgb(data, pre.resize, settings.max_bytes, settings.max_pixels))

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()  # uvicorn stops accepting first: in-flight requests finish
        decoders.shutdown()
        explainer.thread.shutdown()

    app = FastAPI(title="finetune serve", version=__version__, lifespan=lifespan,
                  description=f"Image classification with {len(names)} classes; see docs/serve.md.")

    async def classify(uploads: list[tuple[str, bytes]], top_k: int, reject: str | None, tta: bool):
        start = time.perf_counter()
        if not uploads:
            raise HTTPException(422, "no image in the request")
        if len(uploads) > settings.max_images:
            raise HTTPException(413, f"{len(uploads)} images in one request; at most {settings.max_images}")
        try:
            rule = resolve_reject(reject, source, engine)
        except Exception as exc:
            raise HTTPException(422, str(exc)) from None
        loop = asyncio.get_running_loop()
        results = [Prediction(name) for name, _ in uploads]
        jobs = [loop.run_in_executor(decoders, decode, data) for _, data in uploads]
        tensors = await asyncio.gather(*jobs, return_exceptions=True)
        good, too_large = [], False
        for i, t in enumerate(tensors):
            if isinstance(t, BaseException):
                results[i].error = f"{type(t).__name__}: {t}"
                too_large |= isinstance(t, TooLarge)
            else:
                good.append(i)
        if not good:
            metrics.request("error")
            raise HTTPException(413 if too_large else 422,
                                [r.to_dict() for r in results] if len(results) > 1 else results[0].error)
        try:
            futures = batcher.submit([tensors[i] for i in good], tta)
        except QueueFull as exc:
            metrics.request("busy")
            return JSONResponse({"detail": str(exc)}, 503, headers={"Retry-After": "1"})
        outputs = await asyncio.gather(*futures)
        logits = torch.stack([o[0] for o in outputs])
        embeddings = torch.stack([o[1] for o in outputs]) if rule is not None and rule.needs_embeddings else None
        k = max(1, min(top_k, len(names)))
        for i, (top, verdict) in zip(good, rank(logits, names, k, source.temperature, rule, embeddings)):
            results[i].top, results[i].verdict = top, verdict
        metrics.request("ok", len(good), time.perf_counter() - start)
        return [r.to_dict() for r in results]

    @app.post("/predict", summary="Top-k classes of one or several images (multipart files or JSON base64)")
    async def predict(request: Request):
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                body = JsonRequest.model_validate(await request.json())
                uploads = [(im.name, base64.b64decode(im.data, validate=True)) for im in body.images]
            except Exception as exc:
                raise HTTPException(422, f"a JSON body is {{images: [{{name, data (base64)}}], top_k, reject, "
                                         f"tta}}: {exc}") from None
            return await classify(uploads, body.top_k, body.reject, body.tta)
        try:
            form = await request.form(max_files=settings.max_images)
        except StarletteHTTPException as exc:  # Starlette's 400 for a form over its limits
            code = 413 if "Too many" in str(exc.detail) else 422
            raise HTTPException(code, f"{exc.detail} (at most {settings.max_images} images per request)") from None
        uploads = [(f.filename or "image", await f.read()) for f in form.getlist("files") if hasattr(f, "read")]
        tta = str(form.get("tta", "false")).lower() in ("1", "true", "yes", "on")
        reject = form.get("reject") or None
        try:
            top_k = int(form.get("top_k", 1))
        except ValueError:
            raise HTTPException(422, "top_k is a whole number") from None
        return await classify(uploads, top_k, reject, tta)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/info")
    async def info():
        return {"classes": names, "preprocessing": vars(pre), "engine": engine, "version": __version__,
                "temperature": source.temperature, "reject_threshold": source.reject_threshold,
                "reject_auto": auto_score,
                "max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms, "cam": explainer.why_not is None}

    @app.post("/cam", summary="Grad-CAM: a JPEG of the image as the model saw it, coloured where it looked for its "
                              "top class (or `label`); .pt models with finetune[explain] only",
              response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
    async def cam(file: UploadFile = File(...), label: Optional[str] = Form(None)):
        if explainer.why_not:
            raise HTTPException(501, explainer.why_not)
        if label is not None and label not in names:
            raise HTTPException(422, f"no class {label!r}; the classes are {', '.join(names)}")
        loop = asyncio.get_running_loop()
        try:
            image = await loop.run_in_executor(decoders, read_rgb, await file.read(), pre.resize, settings.max_bytes,
                                               settings.max_pixels)
        except TooLarge as exc:
            raise HTTPException(413, str(exc)) from None
        except Exception as exc:
            raise HTTPException(422, f"{type(exc).__name__}: {exc}") from None
        target = None if label is None else names.index(label)
        jpeg = await loop.run_in_executor(explainer.thread, explainer.overlay, image, target)
        return Response(jpeg, media_type="image/jpeg")

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return (files(__package__) / "page.html").read_text(encoding="utf-8")

    return app
