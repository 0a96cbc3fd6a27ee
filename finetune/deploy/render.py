"""What `finetune predict`, `evaluate` and `export` print: tables for people, JSON and CSV for programs."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

from ..console import literal
from .evaluate import Evaluation
from .multilabel import MultilabelEvaluation
from .predict import Prediction


def print_predictions(results: list[Prediction], format: str, rejecting: bool, console=None) -> None:
    """`format`: table, or one of format_predictions' formats, on standard output."""
    if format == "table":
        from rich.console import Console

        (console or Console()).print(prediction_table(results))
    else:
        sys.stdout.write(format_predictions(results, format, rejecting))


def format_predictions(results: list[Prediction], format: str, rejecting: bool, header: bool = True) -> str:
    """json (a list of Prediction.to_dict), jsonl (one per line) or csv (one row per ranked class, an unreadable file
    one row with its error; `header`: its first row). With --reject the CSV says what each image was called (its
    top label, or unknown)."""
    if format == "json":
        return json.dumps([r.to_dict() for r in results], indent=2) + "\n"
    if format == "jsonl":
        return "".join(json.dumps(r.to_dict()) + "\n" for r in results)
    out = io.StringIO()
    writer = csv.writer(out)
    if header:
        writer.writerow(["path", *(["prediction"] if rejecting else []), "rank", "label", "index", "prob", "error"])
    for r in results:
        said = [r.label or ""] if rejecting else []
        for rank, t in enumerate(r.top, 1):
            writer.writerow([r.path, *said, rank, t.label, t.index, t.prob, ""])
        if r.error or not r.top:  # unreadable; or a multi-label image with no label over its threshold
            writer.writerow([r.path, *said, "", "", "", "", r.error or ""])
    return out.getvalue()


def prediction_table(results: list[Prediction]):
    from rich.table import Table

    table = Table("path", "prediction", "probability")
    for r in results:
        probs = "\n".join(f"{t.prob:.3f}" for t in r.top)
        if r.error:
            table.add_row(literal(r.path), "[red]unreadable[/]", literal(r.error))
        elif r.rejected:  # --reject: below the threshold, the classes it was closest to stay visible
            closest = literal("\n".join(f"({t.label})" for t in r.top))
            table.add_row(literal(r.path), f"[yellow]unknown[/]\n{closest}", "\n" + probs)
        elif not r.top:  # a multi-label model: no label reached its threshold
            table.add_row(literal(r.path), "[dim](no label)[/]", "")
        else:
            table.add_row(literal(r.path), literal("\n".join(t.label for t in r.top)), probs)
    return table


def int8_lines(check) -> list[str]:
    """What an INT8 export says about itself (deploy.quantize's check): agreement, accuracy before/after, speed."""
    skipped = f", {check.unreadable} unreadable left out" if check.unreadable else ""
    lines = [f"int8: top-1 agreement with fp32 {check.agreement:.3f} on {check.images} images "
             f"({check.source}{skipped})"]
    if check.accuracy_fp32 is not None:
        lines.append(f"int8: top-1 accuracy fp32 {check.accuracy_fp32:.3f} -> int8 {check.accuracy_int8:.3f} "
                     f"({0.0 - check.drop:+.1f} points, {check.labelled} labelled images; measured on the calibration "
                     "images, so optimistic)")
    else:
        lines.append("int8: no labels among the calibration images (no class folders), so accuracy was not checked")
    lines.append(f"int8: speed on this CPU (onnxruntime, batch {check.batch}, median of {check.rounds} alternating "
                 f"runs): fp32 {check.fp32_images_per_s:.1f} images/s, int8 {check.int8_images_per_s:.1f} images/s "
                 f"({check.speedup:.2f}x)")
    return lines


def print_multilabel_evaluation(console, evaluation: MultilabelEvaluation) -> None:
    """`finetune evaluate` of a multi-label checkpoint: mAP and F1s, then per label."""
    from rich.table import Table

    r = evaluation.to_dict()
    head = Table(title=f"evaluate {literal(r['checkpoint'])} on {literal(r['data'])}", show_header=False,
                 title_justify="left")
    head.add_column(style="bold")
    head.add_column()
    missing = [c["class"] for c in r["per_class"] if c["ap"] is None]
    head.add_row("images", f"{r['images']} scored")
    head.add_row("mAP", f"{r['map']:.4f}" + (f" (without {literal(', '.join(missing))}: no positive image here)"
                                              if missing else ""))
    head.add_row("F1 at the thresholds", f"micro {r['micro_f1']:.4f}, macro {r['macro_f1']:.4f}; every label right "
                                         f"on {r['exact_match']:.1%} of the images")
    if r["unknown_labels"]:
        head.add_row("[yellow]not scored[/]", "labels the checkpoint does not know: " +
                     literal(", ".join(f"{k} ({n} images)" for k, n in r["unknown_labels"].items())))
    if r["unreadable"]:
        head.add_row("[yellow]unreadable[/]", f"{len(r['unreadable'])} file(s), listed in the JSON output")
    console.print(head)
    per = Table("label", "AP", "threshold", "precision", "recall", "F1", "support", title="per label",
                title_justify="left")
    for c in r["per_class"]:
        per.add_row(literal(c["class"]), "-" if c["ap"] is None else f"{c['ap']:.4f}", f"{c['threshold']:.3f}",
                    f"{c['precision']:.4f}", f"{c['recall']:.4f}", f"{c['f1']:.4f}", str(c["support"]))
    console.print(per)
    console.print(f"written to {literal(r['output'])}: " + ", ".join(Path(v).name for v in r["files"].values()))


def print_evaluation(console, evaluation: Evaluation | MultilabelEvaluation) -> None:
    """The rich table form of `finetune evaluate`."""
    from rich.table import Table

    if isinstance(evaluation, MultilabelEvaluation):
        return print_multilabel_evaluation(console, evaluation)
    r = evaluation.to_dict()
    head = Table(title=f"evaluate {literal(r['checkpoint'])} on {literal(r['data'])}", show_header=False,
                 title_justify="left")
    head.add_column(style="bold")
    head.add_column()
    head.add_row("images", f"{r['images']} scored")
    lo, hi = r["top1_interval"]
    head.add_row("top-1 accuracy", f"{r['top1']:.4f} (95% interval {lo:.3f}-{hi:.3f}, Wilson, {r['images']} images)")
    if r["top5"] is not None:
        head.add_row("top-5 accuracy", f"{r['top5']:.4f}")
    c = r["calibration"]
    probs = "raw softmax" if r["raw"] else f"calibrated, T = {c['temperature']:.3f}"
    head.add_row("ECE", f"{r['ece']:.4f} ({probs}; raw {c['ece_raw']:.4f}, calibrated {c['ece_calibrated']:.4f})")
    head.add_row("NLL", f"raw {c['nll_raw']:.4f}, calibrated {c['nll_calibrated']:.4f}")
    head.add_row("TTA", "horizontal flip (mean of logits)" if r["tta"] else "off")
    if r["unknown_classes"]:
        unknown = literal(", ".join(f"{k} ({n} images)" for k, n in r["unknown_classes"].items()))
        head.add_row("[yellow]not scored[/]", f"classes the checkpoint does not know: {unknown}")
    if r["unreadable"]:
        head.add_row("[yellow]unreadable[/]", f"{len(r['unreadable'])} file(s), listed in the JSON output")
    console.print(head)

    per = Table("class", "precision", "recall", "recall 95%", "F1", "support", title="per class",
                title_justify="left")
    def scores(s: dict) -> list[str]:
        interval = f"{s['recall_interval'][0]:.3f}-{s['recall_interval'][1]:.3f}" if "recall_interval" in s else ""
        return [f"{s['precision']:.4f}", f"{s['recall']:.4f}", interval, f"{s['f1']:.4f}", str(s["support"])]

    for row in r["per_class"]:
        per.add_row(literal(row["class"]), *scores(row))
    per.add_section()
    for name in ("macro", "weighted"):
        per.add_row(f"[bold]{name} avg[/]", *scores(r[name]))
    console.print(per)

    names = r["classes"]
    if len(names) <= 12:
        cm = Table("true \\ predicted", *map(literal, names), title="confusion matrix", title_justify="left")
        for name, counts in zip(names, r["confusion_matrix"]):
            i = names.index(name)
            cm.add_row(literal(name), *(f"[bold]{n}[/]" if j == i else str(n) for j, n in enumerate(counts)))
        console.print(cm)
    files = Table(show_header=False, title=f"written to {literal(r['output'])}", title_justify="left")
    for key, value in r["files"].items():
        files.add_row(key, literal(Path(value).name) if value else "[dim]none (no mistakes)[/]")
    console.print(files)


def print_suggestions(result, format: str, console=None) -> None:
    """`finetune suggest`: a table for people; json (Suggestions.to_dict) or csv (the rows --output writes, an
    @list) for programs. Unreadable photos are listed in the JSON, and after the table (on stderr)."""
    if format == "json":
        print(json.dumps(result.to_dict(), indent=2))
        return
    if format == "csv":
        sys.stdout.write(result.csv_text())
        return
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table("rank", title=f"label these {len(result.chosen)} of {result.photos} photos first",
                  title_justify="left")
    table.add_column("path", overflow="fold")  # the whole path: it is what the user opens next
    for name in ("margin", "model says", "why chosen"):
        table.add_column(name)
    for s in result.chosen:
        table.add_row(str(s.rank), literal(s.path), f"{s.margin:.3f}", literal(s.model_says), s.why)
    console.print(table)


def print_soup(soup, console=None) -> None:
    """`finetune average`: each checkpoint alone on val, whether it joined, and the soup."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()

    def acc(score) -> str:
        return f"{score.acc:.4f}" if score is not None else "-"

    table = Table("checkpoint", "val acc alone", "val acc of the soup with it", "in the soup",
                  title=f"{soup.method} soup of {len(soup.kept)} of {len(soup.ingredients)} checkpoints: "
                        f"{literal(soup.output)}", title_justify="left")
    for i in soup.ingredients:
        table.add_row(literal(i.path), acc(i.score), acc(i.soup_score), "yes" if i.kept else "[dim]no[/]")
    console.print(table)
    if soup.score is not None:
        console.print(f"soup: val acc {soup.score.acc:.4f}, val loss {soup.score.loss:.4f} on {soup.score.images} "
                      f"images ({literal(soup.val)}; the split it was chosen on)", soft_wrap=True)
    for note in soup.notes:
        console.print(f"[yellow]{literal(note)}[/]", soft_wrap=True)


def print_wise_ft(result, console=None) -> None:
    """`finetune wise-ft`: what moved, and the result's val score."""
    from rich.console import Console

    console = console or Console()
    if not result.moved:
        console.print("[yellow]the backbone did not train in this run (pretrained = fine-tuned outside the head): "
                      "every alpha gives the same model[/]")
    score = (f"val acc {result.score.acc:.4f}, val loss {result.score.loss:.4f} on {result.score.images} images "
             f"({literal(result.val)})" if result.score is not None else f"not scored: {literal(result.val)}")
    console.print(f"wise-ft alpha {result.alpha:g}: {result.moved} backbone tensor(s) interpolated; {score}",
                  soft_wrap=True)
