"""The training embeddings of best.pt (train.bank): every training image's head input under the eval transform,
unit rows, the same whether the frozen features were cached or not; a seeded sample above the cap."""

import pytest
import torch

from finetune.checkpoint import Checkpoint
from finetune.config import build_recipe
from finetune.models.registry import create_model
from finetune.runtime.device import resolve_compute
from finetune.train.bank import BankPass
from finetune.train.loop import fit


def test_above_the_cap_the_bank_is_a_seeded_sample_in_file_order(image_folder):
    samples = [(str(p), 0) for p in sorted((image_folder / "train").rglob("*.png"))]
    model, info = create_model(build_recipe({"model": {"source": "timm", "name": "test_efficientnet",
                                                       "weights": None}}).model, 2, 32)
    kw = dict(preprocessing=info.preprocessing, head_name=info.head_name, compute=resolve_compute("cpu"),
              batch_size=4, workers=0)
    a, b = (BankPass.of(samples, seed=0, cap=5, **kw) for _ in range(2))
    assert a.images.samples == b.images.samples and len(a.images) == 5 and a.sampled_from == len(samples)
    assert a.images.samples == sorted(a.images.samples)  # a subsequence of file order
    assert BankPass.of(samples, seed=1, cap=5, **kw).images.samples != a.images.samples
    bank = a.embeddings(model.eval())
    assert bank.vectors.shape == (5, info.feature_dim) and bank.vectors.dtype == torch.float16
    assert torch.allclose(bank.vectors.float().norm(dim=1), torch.ones(5), atol=1e-3)
    assert len(BankPass.of(samples, seed=0, **kw).images) == len(samples)  # under the cap: all of them


@pytest.mark.slow
def test_best_pt_holds_the_training_embeddings_cached_or_not(tiny_tree, tmp_path):
    banks = []
    for cache in ("auto", "off"):
        tree = {**tiny_tree, "features": {"cache": cache, "dir": str(tmp_path / "features")},
                "run": {"output": str(tmp_path / f"run-{cache}")}}
        run_dir = fit(build_recipe(tree))
        best = Checkpoint.load(run_dir / "best.pt")
        assert best.embeddings.sampled_from == 16 and len(best.embeddings.vectors) == 16  # 8 blue + 8 red
        assert best.calibration.reject_knn.score == "knn" and best.calibration.reject.score == "probability"
        assert Checkpoint.load(run_dir / "last.pt").embeddings is None  # for resuming; best.pt is what deploys
        banks.append(best.embeddings.vectors.float())
    assert torch.allclose(banks[0], banks[1], atol=2e-3)  # the feature store's and the images' pass agree
