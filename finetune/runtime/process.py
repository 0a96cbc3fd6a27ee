"""The process-wide settings the command line makes for its own process, each with an opt-out.

A library call never changes its host process, so `finetune.fit()` or `finetune.predict()` from your own
Python leaves the allocator, the garbage collector, torch's thread count and the warning filters as it
found them. The `finetune` command is its own process, and there these settings pay (docs/performance.md):

| setting | what | opt-out |
| --- | --- | --- |
| heap | glibc keeps freed memory for the next batch (`memory.keep_freed_memory`) | FINETUNE_KEEP_HEAP=0 |
| gc | the ~460,000 objects torch, torchvision and timm import are frozen out of collections | FINETUNE_GC_FREEZE=0 |
| threads | at most the usable CPUs per process (`threads`); measured on a busy machine | FINETUNE_TUNE_THREADS=0 |
| warnings | Pillow's DecompressionBombWarning is silenced: finetune refuses those images with its own message | - |

Call `tune_process()` yourself to get the same in a script of your own.
"""

from __future__ import annotations

import os
import warnings


def _on(name: str) -> bool:
    return os.environ.get(name, "1").strip().lower() not in ("0", "false", "no", "off")


def tune_process(imports: tuple[str, ...] = ("torch", "torchvision", "timm")) -> None:
    """Apply the settings above, and import `imports` now, under the garbage-collector setting, so that their
    objects are frozen out of later collections (the commands that run a model name what they will need)."""
    import importlib

    from . import memory, threads

    if _on("FINETUNE_KEEP_HEAP"):
        memory.keep_freed_memory()
    threads.enable_tuning(_on("FINETUNE_TUNE_THREADS"))
    if _on("FINETUNE_TUNE_THREADS") and "torch" in imports:
        threads.fit_threads_to_cpus()
    from PIL import Image

    # Pillow warns between 1x and 2x its pixel limit; data.images.open_image refuses those with a clear error.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    if imports and _on("FINETUNE_GC_FREEZE"):
        with memory.long_lived():
            for name in imports:
                importlib.import_module(name)


def die_with_launcher() -> None:
    """A rank started by torchrun gets SIGTERM when its launcher dies (kill -9 of torchrun): it then stops as on
    Ctrl-C, after its step, with last.pt saved by rank 0, instead of training on unseen. Linux only."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (AttributeError, OSError):
        pass
