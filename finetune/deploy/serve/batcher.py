"""Dynamic batching: images that arrive within max_wait_ms run as one forward pass of up to max_batch."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import torch


class QueueFull(RuntimeError):
    """More images wait than the server accepts (503 with Retry-After)."""


class Batcher:
    """run(tensor, tta) -> the image's row of the runner's output: a tensor, or a tuple of tensors (or None) row
    by row (deploy.predict.make_runner's (logits, embeddings)). One thread runs the model; `on_batch(size,
    seconds)` observes."""

    def __init__(self, runner, max_batch: int = 32, max_wait_ms: float = 5.0, max_queue: int = 256,
                 on_batch=None):
        self.runner, self.max_batch, self.max_wait = runner, max(1, max_batch), max_wait_ms / 1000
        self.max_queue, self.on_batch = max_queue, on_batch
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="finetune-model")

    async def start(self) -> None:
        self._queue = asyncio.Queue(self.max_queue)
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Run every image already accepted, then stop."""
        await self._queue.join()
        self._task.cancel()
        self._model_thread.shutdown()

    def submit(self, images: list[torch.Tensor], tta: bool) -> list[asyncio.Future]:
        """Queue the images together (all or none): QueueFull when they do not fit."""
        if self._queue.qsize() + len(images) > self.max_queue:
            raise QueueFull(f"{self._queue.qsize()} images are waiting (at most {self.max_queue})")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in images]
        for image, future in zip(images, futures):
            self._queue.put_nowait((image, tta, future))
        return futures

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except asyncio.TimeoutError:
                    break
            try:
                for tta in (False, True):  # one pass per TTA setting, in arrival order
                    group = [b for b in batch if b[1] is tta]
                    if group:
                        await self._run(loop, group, tta)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _run(self, loop, group, tta: bool) -> None:
        start = time.perf_counter()
        try:
            outputs = await loop.run_in_executor(self._model_thread, self._forward, torch.stack([g[0] for g in group]),
                                                 tta)
        except Exception as exc:  # every waiting request learns of it; the server goes on
            for g in group:
                if not g[2].done():
                    g[2].set_exception(exc)
            return
        for row, g in enumerate(group):
            if not g[2].done():  # a client that went away cancelled its future
                g[2].set_result(_row(outputs, row))
        if self.on_batch:
            self.on_batch(len(group), time.perf_counter() - start)

    def _forward(self, images: torch.Tensor, tta: bool):
        with torch.inference_mode():
            return _on_cpu(self.runner(images, tta))


def _on_cpu(outputs):
    if isinstance(outputs, tuple):
        return tuple(_on_cpu(o) for o in outputs)
    return None if outputs is None else outputs.float().cpu()


def _row(outputs, row: int):
    if isinstance(outputs, tuple):
        return tuple(_row(o, row) for o in outputs)
    return None if outputs is None else outputs[row]
