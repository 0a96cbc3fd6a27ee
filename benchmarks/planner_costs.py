"""The planner's backbone costs (train.planner.BACKBONES' `cost`): forward seconds per image of Lite0, Lite1
and Lite2, each at its own image size, relative to Lite0, on this machine, the way train.estimate times a run
(eval mode, channels-last, batch 8, the fastest of several passes); rounds alternate between the models.
"""

import statistics
import time

import timm
import torch

from finetune.train.planner import BACKBONES


def main(rounds: int = 5, batch: int = 8):
    models = {b.key: (timm.create_model(b.name).eval().to(memory_format=torch.channels_last),
                      torch.randn(batch, 3, b.size, b.size).contiguous(memory_format=torch.channels_last))
              for b in BACKBONES}
    times = {k: [] for k in models}
    with torch.inference_mode():
        for m, x in models.values():
            m(x)
        for r in range(rounds):
            for k, (m, x) in (list(models.items()) if r % 2 == 0 else list(models.items())[::-1]):
                start = time.perf_counter()
                m(x)
                times[k].append((time.perf_counter() - start) / batch)
    base = statistics.median(times[BACKBONES[0].key])
    for b in BACKBONES:
        t = statistics.median(times[b.key])
        print(f"{b.key} ({b.size} px): {1000 * t:.1f} ms per image, {t / base:.2f}x Lite0 (planner uses {b.cost})")


if __name__ == "__main__":
    main()
