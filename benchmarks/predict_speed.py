"""predict() images/s against forward-only loops over pre-loaded tensors, same model, same batch size.

The forward-only loops are the ceiling: images already decoded and preprocessed in memory, the model in
inference mode and channels_last, on whichever thread count (all cores or half) is faster. They run the
checkpoint's model as loaded (`forward`: what a user's own loop would run) and the BatchNorm-folded copy
predict itself runs (`forward_folded`). This process is tuned as the `finetune` command tunes its own
(runtime.process: the heap kept, the thread policy on) from the start, for both sides. predict() is timed
whole: loading the checkpoint, finding files, decoding, preprocessing and the forward pass. Rounds
alternate; medians are reported.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from finetune.data.images import load_rgb
from finetune.data.transforms import eval_transform
from finetune.deploy.loading import load_model
from finetune.deploy.predict import expand_paths, predict
from finetune.models.folding import folded_copy
from finetune.runtime.device import resolve_device
from finetune.runtime.process import tune_process


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    tune_process()  # as the command line does, before anything is timed
    paths = expand_paths([str(args.folder)])
    device = resolve_device(args.device)

    model, ckpt = load_model(args.checkpoint)
    model.to(device, memory_format=torch.channels_last)
    pre = ckpt.preprocessing
    transform = eval_transform(pre)
    batches = [torch.stack([transform(load_rgb(p, pre.resize)) for p in paths[i:i + args.batch_size]])
               for i in range(0, len(paths), args.batch_size)]

    folded = folded_copy(model, batches[0][:1].to(device, memory_format=torch.channels_last))

    def forward_only(net):
        with torch.inference_mode():
            for x in batches:
                net(x.to(device, memory_format=torch.channels_last)).float().softmax(1).cpu()
        if device.type == "cuda":
            torch.cuda.synchronize()

    def ceiling(net):
        """images/s: the faster of all cores and half of them (the candidates predict measures too)."""
        best = 0.0
        for threads in sorted({default, max(1, default // 2)}) if device.type == "cpu" else [default]:
            torch.set_num_threads(threads)
            t = time.perf_counter()
            forward_only(net)
            best = max(best, len(paths) / (time.perf_counter() - t))
        torch.set_num_threads(default)
        return best

    forward_only(model), forward_only(folded)  # warm-up: first-call allocations, kernel selection
    default = torch.get_num_threads()
    fwd, fwd_folded, pred = [], [], []
    for _ in range(args.rounds):
        fwd.append(ceiling(model))
        fwd_folded.append(ceiling(folded))
        t = time.perf_counter()
        results = predict(args.checkpoint, paths, top_k=1, batch_size=args.batch_size, device=args.device)
        pred.append(len(paths) / (time.perf_counter() - t))
        assert len(results) == len(paths) and not any(r.error for r in results)
    print(json.dumps({"images": len(paths), "rounds": args.rounds, "forward": statistics.median(fwd),
                      "forward_folded": statistics.median(fwd_folded), "predict": statistics.median(pred)}))


if __name__ == "__main__":
    main()
