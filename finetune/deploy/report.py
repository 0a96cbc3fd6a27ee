"""report.html: one self-contained page about a run, to open in a browser (a file:// URL works; no network, no
JavaScript): the recipe and the data, the training curves, the calibration, and, once evaluated, accuracy
with its interval, the per-class scores, the confusion matrix and the most confident mistakes.

It reads only files: the run folder (recipe.yaml, data.json, metrics.csv, curves.png, reliability.png, best.pt's
calibration) and an evaluation folder (report.json, confusion_matrix_normalized.png), and thumbnails of the
images the evaluation names. Images are inlined as data URIs; text is HTML-escaped.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path

import yaml

from ..checkpoint import Checkpoint
from ..data.folders import dataset_folders
from ..data.images import sample_at
from ..data.shard_reader import is_shard_root
from ..errors import DataError
from ..files import atomic_write, refuse_inside

THUMB = 192  # pixels: the gallery's thumbnails


def write_report(run_dir: Path, eval_dir: Path | None = None, explain: bool = True) -> Path:
    """RUN_DIR/report.html, from the run folder and (the newest eval-* folder in it, or) `eval_dir`. With
    explain and the grad-cam package installed, each mistake in the gallery gets its Grad-CAM heatmap.
    Returns the page's path."""
    run_dir = Path(run_dir)
    if not (run_dir / "recipe.yaml").is_file():
        raise DataError(f"{run_dir} is not a run folder (no recipe.yaml); report takes a folder written by "
                        "`finetune train`")
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text(encoding="utf-8")) or {}
    root = (recipe.get("data") or {}).get("root")
    refuse_inside(run_dir / "report.html", dataset_folders(root), "the report", DataError)
    eval_dir = Path(eval_dir) if eval_dir else _newest_eval(run_dir)
    evaluation = _read_json(eval_dir / "report.json") if eval_dir else None
    cams = _cams(run_dir, evaluation) if explain and evaluation else {}
    sections = [_summary(run_dir, recipe), _data(run_dir, recipe), _training(run_dir), _calibration(run_dir)]
    sections.append(_evaluation(eval_dir, evaluation, cams) if evaluation else
                    '<section id="evaluation"><h2>Evaluation</h2><p>Not evaluated yet: run <code>finetune evaluate '
                    f'{_e(run_dir / "best.pt")} DATA</code>, then <code>finetune report {_e(run_dir)}</code>.</p>'
                    "</section>")
    page = PAGE.format(title=_e(f"finetune run: {run_dir.name}"), body="\n".join(sections))
    path = run_dir / "report.html"
    atomic_write(path, lambda f: f.write(page.encode("utf-8")))
    return path


def _summary(run_dir: Path, recipe: dict) -> str:
    model, strategy, train = recipe.get("model", {}), recipe.get("strategy", {}), recipe.get("train", {})
    rows = _metrics(run_dir)
    items = [("model", f"{model.get('source')}:{model.get('name')} (weights {model.get('weights')})"),
             ("strategy", f"{strategy.get('name')}, lr {strategy.get('lr')}"),
             ("epochs", f"{len(rows)} of {train.get('epochs')}, batch {train.get('batch_size')}, "
                        f"seed {train.get('seed')}")]
    best = _best(run_dir)
    if best is not None:
        score = (f"val mAP {best.metrics['val_map']:.4f} (chooses best.pt), exact-match accuracy "
                 if "val_map" in best.metrics else "val accuracy ")  # task multilabel
        items.append(("best.pt", f"epoch {best.metrics.get('epoch')}: {score}{best.metrics.get('val_acc', 0):.4f}"
                                 f", val loss {best.metrics.get('val_loss', 0):.4f}"))
        items.append(("classes", ", ".join(best.class_names)))
    if rows:
        items.append(("time", f"{sum(float(r['seconds']) for r in rows):.1f} s of training"))
    return _section("summary", "The run", _table(["", ""], items, header=False))


def _data(run_dir: Path, recipe: dict) -> str:
    summary = _read_json(run_dir / "data.json") or {}
    train, val = summary.get("train", {}), summary.get("val", {})
    counts = _table(["class", "train", "val"], [(c, train.get(c, 0), val.get(c, 0)) for c in train])
    skipped = summary.get("skipped", [])
    left = (f"<p>{len(skipped)} file(s) left out of training:</p>" +
            _table(["file", "why"], [(s["path"], s["reason"]) for s in skipped[:200]]) if skipped else
            "<p>No file was left out.</p>")
    return _section("data", "Data", f"<p>From <code>{_e((recipe.get('data') or {}).get('root'))}</code>.</p>"
                    + counts + left + _findings(recipe))


def _findings(recipe: dict) -> str:
    """What `finetune inspect` says about the data, when it is still where the run found it."""
    root = (recipe.get("data") or {}).get("root")
    if recipe.get("task") == "multilabel":  # finetune inspect reads class folders, which a labels CSV has not
        return ""
    if root and is_shard_root(root):
        return ("<p>The data is WebDataset shards: <code>finetune shard</code> checked their images as it wrote "
                "them, and each shard is checked against its dataset.json as it is read.</p>")
    if not root or not Path(root).is_dir():
        return "<p>The dataset is not at hand here, so it was not inspected.</p>"
    from ..data.doctor import inspect_dataset

    report = inspect_dataset(Path(root))
    shown = [f for f in report.findings if f.severity in ("error", "warning")][:100]
    if not shown:
        return "<p><code>finetune inspect</code> finds nothing to warn about.</p>"
    rows = [(f.severity, f.kind, _relative(f.path, root), f.message) for f in shown]
    return f"<h3>finetune inspect</h3>{_table(['severity', 'kind', 'file', 'finding'], rows)}"


def _training(run_dir: Path) -> str:
    if (run_dir / "head_sweep.png").is_file() and not (run_dir / "curves.png").is_file():  # head_solver lbfgs
        body = _image(run_dir / "head_sweep.png", "the L-BFGS head's loss and accuracy against the L2 strength")
    else:
        body = _image(run_dir / "curves.png", "loss, accuracy and each group's learning rate per epoch")
    rows = _metrics(run_dir)
    if rows:
        keys = [k for k in rows[0] if k != "seconds"]
        body += "<details><summary>metrics.csv</summary>" + _table(keys, [[_fmt(r[k]) for k in keys] for r in rows]) \
                + "</details>"
    return _section("training", "Training", body)


def _calibration(run_dir: Path) -> str:
    best = _best(run_dir)
    c = best.calibration if best else None
    if c is None:
        return _section("calibration", "Calibration", "<p>best.pt holds no calibration.</p>")
    if c.thresholds is not None:  # task multilabel: per-label thresholds, no temperature (train.thresholds)
        return _section("calibration", "Thresholds", f"<p>{_e(c.kept_because or '')}; chosen on {c.images} val "
                        "images.</p>" + _table(["label", "threshold"], zip(best.class_names, map(_fmt, c.thresholds))))
    kept = "" if c.fitted else f" (kept at 1: {c.kept_because or 'no temperature lowers the NLL'})"
    items = [("temperature", f"{c.temperature:.3f}{kept}"),
             ("ECE on val", f"{c.ece_before or 0:.4f} raw, {c.ece_after or 0:.4f} calibrated"),
             ("NLL on val", f"{c.nll_before or 0:.4f} raw, {c.nll_after or 0:.4f} calibrated")]
    note = ("<p>Measured on the images the temperature was fitted on, so optimistic: <code>finetune evaluate</code> "
            "on held-out images gives the honest figure.</p>")
    return _section("calibration", "Calibration", _image(run_dir / "reliability.png", "reliability diagram", "square")
                    + _table(["", ""], items, header=False) + note)


def _multilabel_evaluation(r: dict) -> str:
    """A multi-label evaluation (deploy.multilabel): its scores and the per-label table only."""
    items = [("data", r.get("data")), ("images", r.get("images")), ("mAP", _fmt(r["map"])),
             ("micro-F1", _fmt(r["micro_f1"])), ("macro-F1", _fmt(r["macro_f1"])),
             ("every label right", _fmt(r["exact_match"]))]
    per_class = _table(["label", "AP", "threshold", "precision", "recall", "F1", "support"],
                       [(p["class"], "-" if p["ap"] is None else _fmt(p["ap"]), _fmt(p["threshold"]),
                         _fmt(p["precision"]), _fmt(p["recall"]), _fmt(p["f1"]), p["support"])
                        for p in r["per_class"]])
    return _section("evaluation", "Evaluation", _table(["", ""], items, header=False) + "<h3>Per label</h3>"
                    + per_class)


def _evaluation(eval_dir: Path, r: dict, cams: dict[str, bytes]) -> str:
    if r.get("task") == "multilabel":
        return _multilabel_evaluation(r)
    interval = r.get("top1_interval")
    accuracy = f"{r['top1']:.4f}" + (f" (95% interval {interval[0]:.3f}-{interval[1]:.3f})" if interval else "")
    items = [("data", r.get("data")), ("images", r.get("images")), ("top-1 accuracy", accuracy)]
    if r.get("top5") is not None:
        items.append(("top-5 accuracy", f"{r['top5']:.4f}"))
    items.append(("ECE", f"{r.get('ece', 0):.4f}"))
    per_class = _table(["class", "precision", "recall", "recall 95% interval", "F1", "support"],
                       [(p["class"], _fmt(p["precision"]), _fmt(p["recall"]), _interval(p.get("recall_interval")),
                         _fmt(p["f1"]), p["support"]) for p in r.get("per_class", [])])
    cm = _image(eval_dir / "confusion_matrix_normalized.png", "confusion matrix, rows normalised", "square")
    return _section("evaluation", "Evaluation", _table(["", ""], items, header=False) + "<h3>Per class</h3>"
                    + per_class + "<h3>Confusion matrix</h3>" + cm + _gallery(r.get("most_confident_mistakes", []),
                                                                              cams))


def _gallery(mistakes: list[dict], cams: dict[str, bytes]) -> str:
    if not mistakes:
        return "<h3>Mistakes</h3><p>No image was classified wrong.</p>"
    cards = []
    for m in mistakes:
        thumb = _thumbnail(sample_at(m["path"]))
        cam = cams.get(m["path"])
        pictures = (f'<img src="{thumb}" alt="{_e(Path(m["path"]).name)}">' if thumb else
                    '<div class="missing">image not found</div>')
        if cam:
            pictures += f'<img src="data:image/jpeg;base64,{base64.b64encode(cam).decode()}" alt="Grad-CAM">'
        cards.append(f'<figure><div class="pictures">{pictures}</div><figcaption><b>true:</b> {_e(m["true"])}'
                     f'<br><b>predicted:</b> {_e(m["predicted"])} ({m["prob"]:.2f})<br>'
                     f'<small>{_e(Path(m["path"]).name)}</small></figcaption></figure>')
    note = " Beside each photo, Grad-CAM: where the model looked for the class it chose." if cams else ""
    return (f"<h3>Most confident mistakes</h3><p>Highest predicted-class probability first.{note}</p>"
            f'<div class="gallery">{"".join(cards)}</div>')


def _interval(interval) -> str:
    return f"{interval[0]:.3f}-{interval[1]:.3f}" if interval else ""


def _cams(run_dir: Path, evaluation: dict) -> dict[str, bytes]:
    """{path: Grad-CAM overlay} of the gallery's photos, for the class the model chose; {} without grad-cam."""
    import importlib.util

    mistakes = evaluation.get("most_confident_mistakes", [])
    best = _best(run_dir)
    if not mistakes or best is None or importlib.util.find_spec("pytorch_grad_cam") is None:
        return {}
    from .cam import Explainer

    explainer = Explainer(best)
    out = {}
    for m in mistakes:
        if m["predicted"] in best.class_names and Path(m["path"]).is_file():
            try:
                out[m["path"]] = explainer.overlay(Path(m["path"]), best.class_names.index(m["predicted"]))
            except Exception:  # a photo that cannot be read now: shown without its heatmap
                continue
    return out


# ---------------------------------------------------------------- pieces


def _newest_eval(run_dir: Path) -> Path | None:
    folders = [p for p in run_dir.glob("eval-*") if (p / "report.json").is_file()]
    return max(folders, key=lambda p: (p / "report.json").stat().st_mtime) if folders else None


def _best(run_dir: Path) -> Checkpoint | None:
    try:
        return Checkpoint.load(run_dir / "best.pt")
    except Exception:  # the page says what it can without it
        return None


def _metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.csv"
    return list(csv.DictReader(path.open(encoding="utf-8"))) if path.is_file() else []


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _image(path: Path, alt: str, css: str = "wide") -> str:
    if not path.is_file():
        return f"<p>({_e(path.name)} is not there)</p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img class="{css}" src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _thumbnail(path: Path) -> str | None:
    from PIL import ImageOps

    from ..data.images import load_rgb

    try:
        image = ImageOps.fit(load_rgb(path), (THUMB, THUMB))
    except Exception:  # moved, deleted, unreadable: the card says so
        return None
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=85)
    return f"data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}"


def _table(headers: list[str], rows, header: bool = True) -> str:
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in headers) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table>{head}{body}</table></div>'


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{body}</section>'


def _fmt(value) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{number:.4g}" if not number.is_integer() else str(int(number))


def _relative(path: str, root: str) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


def _e(value) -> str:
    return html.escape(str(value))


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; padding: 1rem; max-width: 60rem;
       color: #222; line-height: 1.45; }}
h1 {{ font-size: 1.5rem; }} h2 {{ border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2rem; }}
table {{ border-collapse: collapse; margin: .5rem 0; font-size: .92rem; }}
td, th {{ border: 1px solid #ddd; padding: .25rem .5rem; text-align: left; vertical-align: top; }}
td {{ overflow-wrap: anywhere; }} th, td:first-child {{ white-space: nowrap; overflow-wrap: normal; }}
table {{ max-width: 100%; }}
th {{ background: #f4f4f4; }}
.scroll {{ overflow-x: auto; }}
img.wide, img.square {{ max-width: 100%; height: auto; display: block; margin: .5rem 0; }}
img.square {{ max-width: min(100%, 28rem); }}
.gallery {{ display: flex; flex-wrap: wrap; gap: .75rem; }}
figure {{ margin: 0; max-width: 100%; }} .pictures {{ display: flex; gap: .25rem; }}
figure img {{ width: 10rem; height: 10rem; object-fit: cover; display: block; max-width: 45vw; }}
figcaption {{ font-size: .85rem; color: #333; }} .missing {{ width: 12rem; height: 3rem; color: #a00; }}
code {{ background: #f4f4f4; padding: 0 .2rem; word-break: break-all; }}
</style></head>
<body>
<h1>{title}</h1>
{body}
<footer><p><small>Written by finetune report.</small></p></footer>
</body></html>
"""
