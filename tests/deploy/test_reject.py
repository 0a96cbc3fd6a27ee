"""predict --reject: images of a class the model never saw are `unknown`, known ones rarely are, in every output
format and with either engine; the thresholds chosen at the end of training travel in best.pt (with the training
embeddings of the knn score) and the .onnx (the probability's)."""

import csv
import io
import json
from dataclasses import replace

import pytest
import torch
from conftest import make_folder, make_image
from PIL import Image
from typer.testing import CliRunner

from finetune.checkpoint import Checkpoint, EmbeddingBank
from finetune.cli import app
from finetune.config import ModelSpec, build_recipe
from finetune.deploy.export import export
from finetune.deploy.loading import load_model
from finetune.deploy.predict import expand_paths, forward_with_inputs, predict
from finetune.errors import CheckpointError, ConfigError
from finetune.models.registry import create_model
from finetune.ood import normalised
from finetune.train.calibration import FALSE_REJECTION, calibration_summary
from finetune.train.loop import fit

KNOWN = {"blue": (30, 60, 220), "red": (220, 40, 30), "yellow": (220, 210, 30)}
HELD_OUT = {"green": (30, 200, 40), "gray": (128, 128, 128)}  # never in training


# --- a model as confident about anything as about what it knows: the knn score sees the difference ----------

NAMES = ["cat", "dog", "fox"]


def eval_batch(ckpt: Checkpoint, paths: list) -> torch.Tensor:
    from finetune.data.images import load_rgb
    from finetune.data.transforms import eval_transform

    pre = ckpt.preprocessing
    return torch.stack([eval_transform(pre)(load_rgb(p, pre.resize)) for p in paths])


def noise(path, seed: int):
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (40, 40, 3), generator=gen, dtype=torch.uint8).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def same_confidence(tmp_path_factory):
    """best.pt of a tiny model whose logits are the same whatever the image (its head's weights are zero, so
    every image is a `dog` at one confidence), with the training embeddings of blue and red images and both
    thresholds chosen on more of them as the end of training chooses them (train.calibration)."""
    root = tmp_path_factory.mktemp("same-confidence")
    spec = ModelSpec(source="timm", name="test_efficientnet", weights=None)
    torch.manual_seed(0)
    model, info = create_model(spec, len(NAMES), 32)
    state = model.state_dict()
    state[f"{info.head_name}.weight"].zero_()
    state[f"{info.head_name}.bias"].copy_(torch.tensor([1.0, 3.0, 2.0]))
    ckpt = Checkpoint(spec, NAMES, info.preprocessing, info.head_name, "feature-extract", state=state)
    colours = [(30, 60, 220), (220, 40, 30)]
    known = {split: [make_image(root / split / f"{i}.png", colours[i % 2], size=40, seed=i + 100 * n)
                     for i in range(count)] for n, (split, count) in enumerate({"train": 24, "val": 20,
                                                                                 "new": 10}.items())}
    net, _ = load_model(ckpt)
    head = net.get_submodule(info.head_name)
    with torch.inference_mode():
        _, train_embeddings = forward_with_inputs(net, head, eval_batch(ckpt, known["train"]))
        logits, val_embeddings = forward_with_inputs(net, head, eval_batch(ckpt, known["val"]))
    bank = EmbeddingBank(normalised(train_embeddings).half(), len(known["train"]))
    summary = calibration_summary(logits.numpy(), torch.ones(len(logits), dtype=torch.long).numpy(),
                                  val_embeddings.numpy(), bank)
    best = replace(ckpt, calibration=summary, embeddings=bank)
    best.save(root / "best.pt")
    old = root / "old.pt"
    replace(best, calibration=replace(summary, reject_knn=None), embeddings=None).save(old)
    far = [noise(root / "far" / f"{i}.png", i) for i in range(10)]
    return {"best": root / "best.pt", "old": old, "far": far, "known": known["new"]}


def test_knn_rejects_far_away_images_that_the_probability_keeps(same_confidence):
    best, far = same_confidence["best"], same_confidence["far"]
    by_knn = predict(best, far, reject="auto", workers=0)
    assert all(r.rejected and r.label == "unknown" for r in by_knn)
    assert {r.to_dict()["reject_score"]["name"] for r in by_knn} == {"knn"}
    kept = predict(best, same_confidence["known"], reject="auto", workers=0)
    assert sum(r.rejected for r in kept) <= 2 and all(r.top[0].label == "dog" for r in kept)
    # the probability (the same for every image here) keeps them all: a number P, or a model without embeddings
    assert not any(r.rejected for r in predict(same_confidence["old"], far, reject="auto", workers=0))
    by_p = predict(best, far, reject=Checkpoint.load(best).reject_threshold, workers=0)
    assert not any(r.rejected for r in by_p) and {r.to_dict()["reject_score"]["name"] for r in by_p} == {
        "probability"}


def test_the_knn_threshold_keeps_to_5_percent_of_the_correct_val_images(same_confidence):
    ckpt = Checkpoint.load(same_confidence["best"])
    knn = ckpt.calibration.reject_knn
    assert knn.score == "knn" and knn.k >= 1 and knn.correct_images == 20 and knn.rejected_correct <= FALSE_REJECTION
    assert -1 <= knn.threshold <= 1 and ckpt.calibration.reject.score == "probability"


def test_an_older_checkpoint_says_probability_in_the_json(same_confidence):
    listed = json.loads(CliRunner().invoke(app, ["predict", str(same_confidence["old"]), *map(str, same_confidence[
        "far"][:2]), "--reject", "auto", "--format", "json"]).stdout)
    assert [r["reject_score"]["name"] for r in listed] == ["probability"] * 2 and not any(r["rejected"] for r in listed)
    assert "reject_score" not in predict(same_confidence["best"], same_confidence["far"][:1], workers=0)[0].to_dict()


def test_serve_rejects_by_knn_as_predict_does_and_says_so(same_confidence):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from finetune.deploy.serve.app import create_app
    from finetune.deploy.serve.settings import ServeSettings

    best = same_confidence["best"]
    photos = same_confidence["far"][:3] + same_confidence["known"][:3]
    offline = [r.to_dict() for r in predict(best, photos, reject="auto", workers=0)]
    with TestClient(create_app(best, ServeSettings(engine="torch"))) as client:
        assert client.get("/info").json()["reject_auto"] == "knn"
        served = client.post("/predict", files=[("files", (p.name, p.read_bytes(), "image/png")) for p in photos],
                             data={"reject": "auto"}).json()
        assert [s["rejected"] for s in served] == [o["rejected"] for o in offline]
        assert [s["reject_score"]["value"] for s in served] == pytest.approx(
            [o["reject_score"]["value"] for o in offline], abs=1e-4)
        plain = client.post("/predict", files=[("files", (p.name, p.read_bytes(), "image/png")) for p in photos])
        assert all("rejected" not in s for s in plain.json())  # without reject, as before


# --- a trained model -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("reject")
    tree = {"model": {"source": "timm", "name": "test_efficientnet", "weights": None},
            "data": {"root": str(make_folder(root / "data", {"train": 12, "val": 8}, classes=KNOWN)),
                     "image_size": 32, "augment": "none", "workers": 0},
            "strategy": {"name": "feature-extract"},  # the default head solver (lbfgs)
            "features": {"dir": str(root / "cache")},
            "train": {"seed": 0}, "run": {"output": str(root / "run")}}
    best = fit(build_recipe(tree)) / "best.pt"
    return {"best": best, "unknown": make_folder(root / "unknown", {"test": 10}, classes=HELD_OUT) / "test",
            "known": make_folder(root / "known", {"test": 10}, classes=KNOWN) / "test"}


def rejected_share(checkpoint, folder, **kw) -> float:
    results = predict(checkpoint, expand_paths([str(folder)]), reject=kw.pop("reject", "auto"), **kw)
    assert all(r.label == ("unknown" if r.rejected else r.top[0].label) for r in results)
    return sum(r.rejected for r in results) / len(results)


@pytest.mark.slow  # trains
def test_held_out_classes_are_unknown_and_known_ones_rejected_at_about_the_stated_rate(world):
    reject = Checkpoint.load(world["best"]).calibration.reject
    assert reject.false_rejection == FALSE_REJECTION and 0 < reject.threshold <= 1
    assert reject.rejected_correct <= FALSE_REJECTION  # on val, by construction
    assert rejected_share(world["best"], world["unknown"]) >= 0.7
    assert rejected_share(world["best"], world["known"]) <= 0.25  # fresh known images: about 5%, loosely on 30
    # a number instead of auto: 0 rejects nothing, 1 everything
    paths = expand_paths([str(world["unknown"])])
    assert not any(r.rejected for r in predict(world["best"], paths, reject=0.0))
    assert all(r.rejected for r in predict(world["best"], paths, reject="1"))
    assert all(r.rejected is None and "label" not in r.to_dict() for r in predict(world["best"], paths))


@pytest.mark.slow  # trains
def test_unknown_in_every_output_format(world):
    runner = CliRunner()
    args = ["predict", str(world["best"]), str(world["unknown"]), "--reject", "auto"]
    listed = json.loads(runner.invoke(app, [*args, "--format", "json"]).stdout)
    assert sum(r["label"] == "unknown" and r["rejected"] for r in listed) >= 14
    rows = list(csv.DictReader(io.StringIO(runner.invoke(app, [*args, "--format", "csv"]).stdout)))
    assert sum(r["prediction"] == "unknown" for r in rows) >= 14 and {"rank", "label", "prob"} <= set(rows[0])
    table = runner.invoke(app, args)
    assert table.exit_code == 0 and table.stdout.count("unknown") >= 14
    bad = runner.invoke(app, [*args[:3], "--reject", "often"])
    assert bad.exit_code == 1 and "--reject takes auto or a probability" in bad.output


@pytest.mark.slow  # trains
def test_the_probability_threshold_travels_in_the_onnx_export_and_works_with_onnxruntime(world, tmp_path):
    pytest.importorskip("onnxruntime")
    onnx = export(world["best"], "onnx", tmp_path / "model.onnx").path
    paths = expand_paths([str(world["unknown"])])
    # an export has no training embeddings: auto is the calibrated probability there, as with the onnxruntime engine
    by_probability = predict(world["best"], paths, reject=Checkpoint.load(world["best"]).reject_threshold)
    share = sum(r.rejected for r in by_probability) / len(paths)
    for results in (predict(onnx, paths, reject="auto"), predict(world["best"], paths, reject="auto",
                                                                  engine="onnxruntime")):
        assert sum(r.rejected for r in results) / len(paths) == share
        assert {r.to_dict()["reject_score"]["name"] for r in results} == {"probability"}


@pytest.mark.slow  # trains
def test_old_checkpoints_load_and_say_what_to_do_for_auto(world, tmp_path):
    ckpt = Checkpoint.load(world["best"])
    old = tmp_path / "old.pt"
    assert ckpt.embeddings is not None and ckpt.calibration.reject_knn is not None  # as trained now
    ckpt.calibration = replace(ckpt.calibration, reject=None, reject_knn=None)  # as before thresholds
    ckpt.embeddings = None
    ckpt.save(old)
    assert Checkpoint.load(old).reject_threshold is None
    with pytest.raises(CheckpointError, match="stores no rejection threshold"):
        predict(old, expand_paths([str(world["unknown"])]), reject="auto")
    with pytest.raises(ConfigError, match="from 0 to 1"):
        predict(old, expand_paths([str(world["unknown"])]), reject=1.5)
    damaged = tmp_path / "damaged.pt"
    payload = torch.load(world["best"], weights_only=True)
    payload["meta"]["calibration"]["reject"]["threshold"] = float("nan")
    torch.save(payload, damaged)
    with pytest.raises(CheckpointError, match="rejection threshold"):
        Checkpoint.load(damaged)
