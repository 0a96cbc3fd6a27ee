"""Images/s of torch eager against onnxruntime fp32 and INT8 for one checkpoint, side by side in one process.

Needs RUN/best.pt, RUN/best.onnx and RUN/best.int8.onnx (`finetune export RUN/best.pt --format onnx [--int8]`).
Forward only: the same pre-decoded images (FOLDER, at most 32), batch 16; torch as predict runs it (BatchNorm
folded, channels_last, inference mode), onnxruntime's CPU provider; each on all cores and on one thread (on a
busy machine fewer threads win). Then predict() whole (decoding included) per engine: the checkpoint with
torch, the checkpoint exported on the fly (--engine onnxruntime), the .onnx and the .int8.onnx. This process
is tuned as the `finetune` command tunes its own. Rounds alternate (the order reversed every other round), so
a change of load hits every variant alike; medians are reported.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import onnxruntime
import torch

from finetune.checkpoint import Checkpoint
from finetune.data.images import load_rgb
from finetune.data.transforms import eval_transform
from finetune.deploy.predict import expand_paths, predict, torch_runner
from finetune.runtime.process import tune_process


def alternate(fns: dict, rounds: int, images: int) -> dict:
    for f in fns.values():
        f()  # warm-up
    times = {k: [] for k in fns}
    for r in range(rounds):
        for k, f in (list(fns.items()) if r % 2 == 0 else list(fns.items())[::-1]):
            start = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - start)
    return {k: round(images / statistics.median(v), 1) for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run", type=Path)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    tune_process()
    ckpt = Checkpoint.load(args.run / "best.pt")
    paths = expand_paths([str(args.folder)])
    transform = eval_transform(ckpt.preprocessing)
    x = torch.stack([transform(load_rgb(p, ckpt.preprocessing.resize)) for p in paths[:32]])
    batches = [x[i:i + 16] for i in range(0, len(x), 16)]
    cores = torch.get_num_threads()
    eager = torch_runner(ckpt, torch.device("cpu"))

    def run_torch(threads):
        def f():
            torch.set_num_threads(threads)
            with torch.inference_mode():
                for b in batches:
                    eager(b.contiguous(memory_format=torch.channels_last))
            torch.set_num_threads(cores)
        return f

    def run_ort(file, threads):
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(args.run / file), options, providers=["CPUExecutionProvider"])
        return lambda: [session.run(["logits"], {"images": b.numpy()}) for b in batches]

    fns = {}
    for threads in sorted({cores, 1}, reverse=True):
        fns[f"torch eager, {threads} thread(s)"] = run_torch(threads)
        fns[f"onnxruntime fp32, {threads} thread(s)"] = run_ort("best.onnx", threads)
        fns[f"onnxruntime int8, {threads} thread(s)"] = run_ort("best.int8.onnx", threads)
    forward = alternate(fns, args.rounds, len(x))

    whole = alternate({"predict (torch)": lambda: predict(args.run / "best.pt", paths),
                       "predict --engine onnxruntime (on the fly)":
                           lambda: predict(args.run / "best.pt", paths, engine="onnxruntime"),
                       "predict best.onnx": lambda: predict(args.run / "best.onnx", paths),
                       "predict best.int8.onnx": lambda: predict(args.run / "best.int8.onnx", paths)},
                      max(1, args.rounds // 2), len(paths))
    print(json.dumps({"checkpoint": str(args.run / "best.pt"), "images": len(paths), "cores": cores,
                      "forward images/s (batch 16)": forward, "predict images/s, decoding included": whole},
                     indent=2))


if __name__ == "__main__":
    main()
