"""Recall of `finetune audit` on a copy of a real dataset with defects injected: --flip photos of train moved
into another class's folder, --leak val photos resized to half size and saved (JPEG q90) into train's folder of
their class, and --small train photos at most 300 px wide (the copies the embedding alone misses, issue 25)
resized to 70% and saved (JPEG q90) into val. Copies DATA to --work (never writes in DATA), runs the audit
command, and compares; each planted copy is listed with the detector that found it.

    PYTHONPATH=. python benchmarks/audit_recall.py recipes/efficientnet-lite0-feature-extract.yaml \
        --work /tmp/hym-defects --out /tmp/hym-defects-audit
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

from finetune.config import load_recipe
from finetune.data.folders import is_image_name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", type=Path)
    ap.add_argument("--work", type=Path, required=True, help="where the damaged copy goes (recreated)")
    ap.add_argument("--out", type=Path, required=True, help="the audit's --output (recreated)")
    ap.add_argument("--flip", type=int, default=10)
    ap.add_argument("--leak", type=int, default=5)
    ap.add_argument("--small", type=int, default=3)
    args = ap.parse_args()
    data = Path(load_recipe(args.recipe).data.root).expanduser().resolve()
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(args.out, ignore_errors=True)
    shutil.copytree(data, work)
    rng = random.Random(0)
    classes = sorted(p.name for p in (work / "train").iterdir() if p.is_dir())
    train = sorted(p for p in (work / "train").rglob("*") if p.is_file() and is_image_name(p))
    flipped = {}
    for p in rng.sample(train, args.flip):
        other = rng.choice([c for c in classes if c != p.parent.name])
        dst = work / "train" / other / f"flipped-{p.name}"
        shutil.move(p, dst)
        flipped[str(dst)] = p.parent.name
    val = sorted(p for p in (work / "val").rglob("*") if p.is_file() and is_image_name(p))
    leaks = []
    for p in rng.sample(val, args.leak):
        im = Image.open(p).convert("RGB")
        dst = work / "train" / p.parent.name / f"resized-{p.stem}.jpg"
        im.resize((im.width // 2, im.height // 2), Image.BILINEAR).save(dst, quality=90)
        leaks.append({str(p), str(dst)})
    small = [p for p in sorted((work / "train").rglob("*")) if p.is_file() and is_image_name(p)
             and not p.name.startswith(("flipped-", "resized-")) and Image.open(p).width <= 300]
    for p in small[:args.small]:
        im = Image.open(p).convert("RGB")
        dst = work / "val" / p.parent.name / f"small-{p.stem}.jpg"
        im.resize((round(im.width * 0.7), round(im.height * 0.7)), Image.BILINEAR).save(dst, quality=90)
        leaks.append({str(p), str(dst)})
    out = subprocess.run([sys.executable, "-m", "finetune", "audit", str(args.recipe), "--data", str(work),
                          "--output", str(args.out), "--format", "json"], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    report = json.loads(out.stdout)
    issues = {f["path"]: f for f in report["findings"] if f["kind"] == "label-issue"}
    pairs = [{f["path"], f["related"]} for f in report["findings"] if f["kind"] != "label-issue"]
    hit = [p for p in flipped if p in issues]
    print(f"flipped labels: {len(hit)}/{len(flipped)} found (recall {len(hit) / len(flipped):.0%}); "
          f"{len(issues)} label issues reported, {len(issues) - len(hit)} of them not injected; suggested label "
          f"right for {sum(issues[p]['suggested'] == flipped[p] for p in hit)}/{len(hit)}")
    found = [leak for leak in leaks if leak in pairs]
    print(f"resized copies across train and val: {len(found)}/{len(leaks)} found "
          f"(recall {len(found) / len(leaks):.0%});"
          f" {len(pairs)} pairs reported, {len(pairs) - len(found)} not injected")
    by_pair = {frozenset((f["path"], f["related"])): f for f in report["findings"] if f["kind"] != "label-issue"}
    for leak in leaks:
        f = by_pair.get(frozenset(leak))
        name = max(leak, key=len).split("/")[-1]
        print(f"  {name}: " + (f"{f['detector']} (similarity {f['score']:.3f}, pHash {f['hamming']} bits)" if f
                                 else "missed"))
    for f in by_pair.values():
        if set((f["path"], f["related"])) not in leaks:
            print(f"  not planted: {f['path']} ~ {f['related']}: {f['detector']} ({f['score']:.3f}, {f['hamming']})")
    print(f"head accuracy {report['accuracy']['mean']:.3f} ± {report['accuracy']['std']:.3f}; "
          f"seconds {report['seconds']}; page {report['output']}/audit.html")


if __name__ == "__main__":
    main()
