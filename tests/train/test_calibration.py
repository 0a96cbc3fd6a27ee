"""Temperature scaling: recovers a known miscalibration, lowers NLL, is stored by fit and used by predict."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from finetune.checkpoint import Checkpoint
from finetune.config import build_recipe
from finetune.deploy.predict import forward, predict
from finetune.metrics import nll, softmax
from finetune.train.calibration import calibration_summary, fit_temperature
from finetune.train.loop import fit


def synthetic(scale: float, n: int = 3000, k: int = 4, seed: int = 0):
    """Labels drawn from softmax(z): z is calibrated by construction, z * scale is not."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, size=(n, k))
    p = softmax(z)
    labels = np.array([rng.choice(k, p=row) for row in p])
    return z * scale, labels


@pytest.mark.parametrize("scale", [3.0, 0.4])  # overconfident, underconfident
def test_temperature_undoes_a_known_miscalibration(scale):
    logits, labels = synthetic(scale)
    t, kept = fit_temperature(logits, labels)
    assert kept is None and t == pytest.approx(scale, rel=0.1)
    assert nll(logits, labels, t) < nll(logits, labels) - 0.02
    s = calibration_summary(logits, labels)
    assert s.nll_after < s.nll_before and s.ece_after < s.ece_before / 2
    assert (softmax(logits, t).argmax(1) == logits.argmax(1)).all()  # accuracy unchanged


def test_no_finite_optimum_keeps_temperature_one_and_says_why():
    logits = np.array([[5.0, 0.0], [0.0, 5.0], [6.0, 1.0]])  # every image right by a wide margin
    assert fit_temperature(logits, np.array([0, 1, 0])) == (1.0, "every val image is classified right: a sharper "
                                                                  "softmax always lowers the NLL")
    logits = np.array([[2.0, 0.0]] * 4)  # one class for every image, half of them wrong: uniform is best
    t, kept = fit_temperature(logits, np.array([0, 1, 0, 1]))
    assert t == 1.0 and kept.startswith("the NLL is lowest at a temperature beyond 0.05-20")


@pytest.mark.slow
def test_fit_stores_temperature_and_curves_and_predict_applies_it(tiny_tree, image_folder):
    tiny_tree["model"]["head"] = {"dropout": 0.2}
    run_dir = fit(build_recipe(tiny_tree))
    assert (run_dir / "curves.png").stat().st_size > 10_000
    for name in ("best.pt", "last.pt"):
        calib = Checkpoint.load(run_dir / name).calibration
        assert calib.fitted in (True, False) and calib.temperature > 0 and calib.images == 8
        assert calib.nll_after <= calib.nll_before + 1e-9 and calib.ece_after is not None
    assert Checkpoint.load(run_dir / "last.pt").resume is not None  # rewriting it with T kept the resume state

    best = Checkpoint.load(run_dir / "best.pt")
    replace(best, calibration={"temperature": 2.5}).save(run_dir / "best.pt")
    images = sorted((image_folder / "val").rglob("*.png"))
    calibrated = predict(run_dir / "best.pt", images, top_k=2, workers=0)
    raw = predict(run_dir / "best.pt", images, top_k=2, workers=0, raw=True)
    for c, r in zip(calibrated, raw):
        assert c.logits == r.logits
        expected = torch.tensor(c.logits).div(2.5).softmax(0)
        assert [t.prob for t in c.top] == pytest.approx(sorted(expected.tolist(), reverse=True), abs=1e-5)
        assert r.top[0].prob == pytest.approx(torch.tensor(r.logits).softmax(0).max().item(), abs=1e-5)
        assert r.top[0].label == c.top[0].label


class LeftColumn(torch.nn.Module):
    """Not mirror-symmetric: its 'logits' are the first pixels of each row."""

    def forward(self, x):
        return x[:, 0, :2, 0]


def test_tta_averages_the_logits_of_the_image_and_its_mirror():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    model = LeftColumn()
    assert torch.equal(forward(model, x), x[:, 0, :2, 0])
    assert torch.equal(forward(model, x, tta=True), (x[:, 0, :2, 0] + x[:, 0, :2, -1]) / 2)


def test_the_knn_threshold_rejects_at_most_5_percent_of_the_correct_val_images():
    from finetune.checkpoint import EmbeddingBank
    from finetune.train.calibration import FALSE_REJECTION, knn_rejection

    gen = torch.Generator().manual_seed(0)
    bank = EmbeddingBank(torch.nn.functional.normalize(torch.randn(200, 16, generator=gen), dim=1).half(), 200)
    val = bank.vectors[:100].float() + 0.3 * torch.randn(100, 16, generator=gen)  # near the training set
    logits, labels = synthetic(2.0, n=100)
    reject = knn_rejection(logits, labels, val.numpy(), bank)
    correct = logits.argmax(1) == labels
    from finetune.ood import knn_similarity
    scores = knn_similarity(val, bank.vectors, 1).numpy()
    assert reject.score == "knn" and reject.k == 1 and reject.correct_images == int(correct.sum())
    assert (scores[correct] < reject.threshold).mean() == pytest.approx(reject.rejected_correct)
    assert reject.rejected_correct <= FALSE_REJECTION
    assert reject.rejected_correct > 0.03  # the largest threshold that keeps to it, not a lax one
    s = calibration_summary(logits, labels, val.numpy(), bank)
    assert s.reject_knn == reject and s.reject.score == "probability"
    assert calibration_summary(logits, labels).reject_knn is None  # last.pt: no training embeddings
