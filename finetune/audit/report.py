"""The audit's outputs: audit.json (everything), audit.csv (one row per finding), audit.html (one self-contained
page, thumbnails inlined as small JPEGs, readable on a phone; the house style of deploy.report) and the table."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..deploy.report import PAGE, _e, _section, _table, _thumbnail
from ..files import atomic_write
from .duplicates import KINDS
from .embeddings import relative

LABEL_ISSUE = "the held-out heads prefer another class: check the photo, fix its folder if the label is wrong"
DETECTORS = {"embedding": "the embeddings' cosine similarity is at least the threshold",
             "phash": "the perceptual hashes (pHash, 64 bits; as saved or one of the two mirrored) differ in at most "
                      "max_distance bits",
             "both": "both of the above"}
TABLE_ROWS = 50  # findings in the console table
SHOWN = 60  # findings of each kind on the page (all of them are in the JSON and CSV)


def findings(audit) -> list[dict]:
    """Every finding as one flat record: kind, path, the related path, split, label, suggested, score."""
    emb, names = audit.embeddings, audit.embeddings.class_names
    splits = ("train", "val")
    rows = []
    for p in audit.pairs:
        a, b = p.first, p.second
        rows.append({"kind": p.kind, "path": emb.paths[a], "related": emb.paths[b],
                     "split": f"{splits[emb.split[a]]}/{splits[emb.split[b]]}",
                     "label": names[emb.labels[a]], "related_label": names[emb.labels[b]],
                     "suggested": "", "score": round(p.similarity, 4), "detector": p.detector,
                     "hamming": p.distance, "mirrored": p.mirrored, "meaning": KINDS[p.kind]})
    for issue in audit.issues:
        i = issue.index
        rows.append({"kind": "label-issue", "path": emb.paths[i], "related": "", "split": splits[emb.split[i]],
                     "label": names[issue.given], "related_label": "", "suggested": names[issue.suggested],
                     "score": round(issue.suggested_prob, 4), "meaning": LABEL_ISSUE,
                     "given_label_prob": round(issue.given_prob, 4)})
    return rows


def to_dict(audit) -> dict:
    emb = audit.embeddings
    rows = findings(audit)
    counts = {kind: sum(r["kind"] == kind for r in rows) for kind in (*KINDS, "label-issue")}
    return {"root": str(audit.root), "output": str(audit.folder), "images": len(emb),
            "train": int((emb.split == 0).sum()), "val": int((emb.split == 1).sum()),
            "classes": emb.class_names, "embedding_dim": int(emb.features.shape[1]),
            "threshold": audit.threshold, "max_distance": audit.max_distance, "detectors": DETECTORS, "counts": counts,
            "accuracy": audit.accuracy.to_dict(),
            "left_out_by_screen": [{"path": p, "reason": why} for p, why in emb.skipped],
            "seconds": {k: round(v, 3) for k, v in audit.seconds.items()}, "findings": rows}


def write_outputs(audit) -> None:
    report = to_dict(audit)
    folder = audit.folder
    atomic_write(folder / "audit.json", lambda f: f.write(json.dumps(report, indent=2, ensure_ascii=False).encode()))
    buf = io.StringIO()
    keys = ["kind", "path", "related", "split", "label", "related_label", "suggested", "score", "given_label_prob",
            "detector", "hamming"]
    writer = csv.DictWriter(buf, keys, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(report["findings"])
    atomic_write(folder / "audit.csv", lambda f: f.write(buf.getvalue().encode("utf-8")))
    page = html_page(report)
    atomic_write(folder / "audit.html", lambda f: f.write(page.encode("utf-8")))


def html_page(report: dict) -> str:
    root, acc = report["root"], report["accuracy"]
    summary = [("data", root), ("images", f"{report['images']} ({report['train']} train, {report['val']} val), "
                                          f"{len(report['classes'])} classes"),
               ("head accuracy", f"{acc['mean']:.3f} ± {acc['std']:.3f} over {acc['repeats']}x{acc['folds']}-fold "
                                 f"(95% interval {acc['interval95'][0]:.3f}-{acc['interval95'][1]:.3f})"),
               ("per-class recall", ", ".join(f"{c} {r:.3f}" for c, r in acc["per_class_recall"].items())),
               ("near-duplicate thresholds", f"cosine similarity ≥ {report['threshold']}, or pHash within "
                                             f"{report['max_distance']} of 64 bits"),
               *[(kind, n) for kind, n in report["counts"].items()]]
    sections = [_section("summary", "Summary", _table(["", ""], summary, header=False))]
    by_kind = {}
    for f in report["findings"]:
        by_kind.setdefault(f["kind"], []).append(f)
    for kind, title in (("leakage", "Leakage (train and val)"), ("conflicting-labels", "Near-duplicates under two "
                        "classes"), ("near-duplicate", "Near-duplicates in one class"),
                        ("label-issue", "Probably wrong labels")):
        rows = by_kind.get(kind, [])
        meaning = KINDS.get(kind, LABEL_ISSUE)
        if not rows:
            sections.append(_section(kind, title, f"<p>None found. ({_e(meaning)})</p>"))
            continue
        more = f" Showing {SHOWN} of {len(rows)}; audit.csv has them all." if len(rows) > SHOWN else ""
        cards = "".join(_card(f, root) for f in rows[:SHOWN])
        sections.append(_section(kind, f"{title}: {len(rows)}", f"<p>{_e(meaning)}.{_e(more)}</p>"
                                 f'<div class="gallery">{cards}</div>'))
    skipped = report["left_out_by_screen"]
    exact = ("<p>Exact byte copies are <code>finetune inspect</code>'s finding; training leaves out the ones that "
             "leak or conflict, listed here, and they are not audited again.</p>"
             + (_table(["file", "why"], [(relative(s["path"], Path(root)), s["reason"]) for s in skipped])
                if skipped else "<p>No file was left out.</p>"))
    sections.append(_section("exact", "Left out before the audit", exact))
    page = PAGE.format(title=_e(f"finetune audit: {Path(root).name}"), body="\n".join(sections))
    return page.replace("Written by finetune report.", "Written by finetune audit; the dataset was only read.")


def _card(f: dict, root: str) -> str:
    paths = [f["path"]] + ([f["related"]] if f["related"] else [])
    pictures = "".join(f'<img src="{t}" alt="{_e(Path(p).name)}">' if (t := _thumbnail(Path(p))) else
                       '<div class="missing">image not found</div>' for p in paths)
    if f["kind"] == "label-issue":
        text = (f"<b>labelled:</b> {_e(f['label'])} ({f['given_label_prob']:.2f})<br><b>suggested:</b> "
                f"{_e(f['suggested'])} ({f['score']:.2f})")
    else:
        text = (f"<b>found by</b> {_e(f['detector'])}: similarity {f['score']:.3f}{_e(_distance(f))}<br>"
                f"{_e(f['label'])} / {_e(f['related_label'])} ({_e(f['split'])})")
    names = " / ".join(_e(relative(p, Path(root))) for p in paths)
    return f'<figure><div class="pictures">{pictures}</div><figcaption>{text}<br><small>{names}</small></figcaption>' \
           "</figure>"


def _distance(f: dict) -> str:
    if f.get("hamming") is None:
        return ""
    return f", pHash {f['hamming']} bits apart" + (" (one mirrored)" if f["mirrored"] else "")


def print_audit(report: dict, console) -> None:
    """The table form, for people."""
    from rich.table import Table

    from ..console import literal

    root = Path(report["root"])
    table = Table("kind", "score", title=f"audit findings (paths under {literal(root)})")
    table.add_column("file", overflow="fold", ratio=2)
    table.add_column("detail", overflow="fold", ratio=2)
    for f in report["findings"][:TABLE_ROWS]:
        if f["kind"] == "label-issue":
            detail = f"labelled {f['label']} ({f['given_label_prob']:.2f}), suggested {f['suggested']}"
        else:
            detail = (f"~ {relative(f['related'], root)} ({f['label']} / {f['related_label']}, {f['split']}; "
                      f"{f['detector']}{_distance(f)})")
        table.add_row(f["kind"], f"{f['score']:.3f}", literal(relative(f["path"], root)), literal(detail))
    if report["findings"]:
        console.print(table)
    if len(report["findings"]) > TABLE_ROWS:
        console.print(f"... and {len(report['findings']) - TABLE_ROWS} more in audit.csv", highlight=False)
    acc = report["accuracy"]
    console.print(f"{report['images']} images ({report['train']} train, {report['val']} val): "
                  + ", ".join(f"{n} {kind}" for kind, n in report["counts"].items()), highlight=False)
    half = (acc["interval95"][1] - acc["interval95"][0]) / 2
    console.print(f"head accuracy {acc['mean']:.3f} ± {acc['std']:.3f} (std over {acc['repeats']}x{acc['folds']}-fold"
                  f" on cached features), 95% interval {acc['interval95'][0]:.3f}-{acc['interval95'][1]:.3f}: two "
                  f"recipes closer than about ±{half:.3f} are not told apart by this data", highlight=False)
    console.print(f"written: {literal(report['output'])}/audit.json, audit.csv, audit.html", highlight=False)
