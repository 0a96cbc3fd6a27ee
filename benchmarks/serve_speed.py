"""`finetune serve` against offline `predict`: images/s and request latency, side by side on one machine.

For each MODEL (a .pt or an exported .onnx, INT8 included): offline predict() over the images of FOLDER (each
--repeat times; the model load included, as in the command), in this process and tuned as the `finetune`
command tunes its own (decoding overlaps the forward pass), with the engine the server uses; then real
`finetune serve MODEL` subprocesses (--max-batch 32, and --max-batch 1 to show what batching buys), each loaded
by C client threads of this process that post one image per request (multipart, one keep-alive connection per
thread), C = 1, 8 and 32. The clients share the machine's cores with the server, as a client on the same host
would. Rounds alternate their order (reversed every other round) so a change of load hits every variant alike;
throughput is the median over rounds, latency percentiles pool every request of every round. Prints one JSON
object per model.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from finetune.deploy.predict import expand_paths, predict
from finetune.runtime.process import tune_process

ROOT = Path(__file__).resolve().parents[1]


def start(model: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "finetune", "serve", str(model), "--port", str(port), *flags],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            if proc.poll() is not None:
                sys.exit(proc.stderr.read())
            time.sleep(0.1)
    sys.exit(f"finetune serve {model} did not start")


def load(url: str, images: list[tuple[str, bytes]], concurrency: int) -> tuple[float, list[float]]:
    """Every image posted once, `concurrency` requests in flight; (wall seconds, each request's seconds)."""
    chunks = [images[i::concurrency] for i in range(concurrency)]

    def client(chunk):
        took = []
        with httpx.Client(base_url=url, timeout=120) as http:
            for name, data in chunk:
                start = time.perf_counter()
                r = http.post("/predict", files=[("files", (name, data, "image/jpeg"))])
                took.append(time.perf_counter() - start)
                if r.status_code != 200:
                    sys.exit(f"{url}: {r.status_code} {r.text[:200]}")
        return took

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = [t for chunk in pool.map(client, chunks) for t in chunk]
    return time.perf_counter() - start, latencies


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def bench(model: Path, paths: list[Path], rounds: int, concurrency: list[int], engine: str) -> dict:
    images = [(p.name, p.read_bytes()) for p in paths]
    servers = {batch: start(model, "--max-batch", str(batch), "--engine", engine) for batch in (32, 1)}
    engine = httpx.get(servers[32][1] + "/info").json()["engine"]
    for _, url in servers.values():
        load(url, images[:16], 4)  # warm-up
    predict(model, paths[:16], engine=engine)
    variants = {"offline predict": lambda: (_timed(lambda: predict(model, paths, engine=engine)), [])}
    for c in concurrency:
        variants[f"serve, concurrency {c}"] = lambda c=c: load(servers[32][1], images, c)
    variants["serve --max-batch 1, concurrency 8"] = lambda: load(servers[1][1], images, 8)
    walls = {k: [] for k in variants}
    latency = {k: [] for k in variants}
    try:
        for r in range(rounds):
            for name, run in (list(variants.items()) if r % 2 == 0 else list(variants.items())[::-1]):
                wall, took = run()
                walls[name].append(wall)
                latency[name] += took
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait()
    offline = len(paths) / statistics.median(walls["offline predict"])
    rows = {}
    for name in variants:
        rate = len(paths) / statistics.median(walls[name])
        row = {"images/s": round(rate, 1), "of offline": f"{rate / offline:.0%}"}
        if latency[name]:
            row |= {"p50 ms": round(1000 * percentile(latency[name], 0.5), 1),
                    "p99 ms": round(1000 * percentile(latency[name], 0.99), 1)}
        rows[name] = row
    return {"model": str(model), "engine": engine, "images": len(paths), "rounds": rounds, "rows": rows}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", type=Path, nargs="+", help="checkpoints (.pt) or exports (.onnx)")
    ap.add_argument("--images", type=Path, required=True, help="a folder of photos (every image is sent once)")
    ap.add_argument("--repeat", type=int, default=2, help="send every image this many times (offline predict too: "
                                                          "its model load is then a smaller share)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--engine", default="auto", choices=["auto", "torch", "onnxruntime"],
                    help="the engine of both sides (auto: torch for a .pt, onnxruntime for an .onnx)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    args = ap.parse_args()
    tune_process()
    paths = expand_paths([str(args.images)]) * args.repeat
    for model in args.models:
        print(json.dumps(bench(model, paths, args.rounds, args.concurrency, args.engine), indent=2), flush=True)


if __name__ == "__main__":
    main()
