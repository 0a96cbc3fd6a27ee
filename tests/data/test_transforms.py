"""ResizeCrop: torchvision's Resize + CenterCrop, resampling only the crop."""

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms as T

from finetune.data.transforms import ResizeCrop


def _photo(w: int, h: int, seed: int) -> Image.Image:
    """Smooth colour gradients plus noise: edges and texture for the filters to get wrong."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], -1)
    return Image.fromarray((base + rng.normal(0, 30, (h, w, 3))).clip(0, 255).astype(np.uint8))


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest"])
def test_resize_crop_matches_torchvision(interpolation):
    # landscape, portrait (longer side truncated), square, smaller than the resize (upsampling), and a resize
    # smaller than the crop (padded)
    for i, (w, h, resize, size) in enumerate([(500, 375, 256, 224), (333, 500, 256, 224), (300, 300, 146, 128),
                                              (199, 272, 256, 224), (640, 101, 64, 64), (90, 120, 60, 64)]):
        im = _photo(w, h, i)
        ref = T.Compose([T.Resize(resize, interpolation=T.InterpolationMode(interpolation)), T.CenterCrop(size)])(im)
        got = ResizeCrop(resize, size, interpolation)(im)
        assert got.size == ref.size == (size, size)
        diff = np.abs(np.asarray(got, dtype=int) - np.asarray(ref, dtype=int))
        if interpolation == "nearest":
            assert diff.max() == 0
        else:  # filter positions from the box round a rare pixel differently in each of the two passes
            assert diff.max() <= 2 and (diff.max(-1) > 0).mean() < 0.01, (w, h, diff.max(), (diff.max(-1) > 0).mean())


@pytest.mark.parametrize("augment", ["flip", "standard", "randaugment", "trivialaugment", "autoaugment"])
def test_every_augmentation_gives_a_normalised_crop_that_repeats_for_the_same_seed(augment):
    import torch

    from finetune.data.transforms import train_transform
    from finetune.preprocessing import Preprocessing

    pre = Preprocessing(32, 36, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    image = Image.effect_noise((60, 40), 60).convert("RGB")
    transform = train_transform(pre, augment, random_erasing=1.0)
    outs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        outs.append(transform(image))
    assert outs[0].shape == (3, 32, 32) and torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
    assert (outs[0] == 0).any()  # random_erasing 1.0: a rectangle erased (to 0 after normalisation)
