"""The transforms built from a checkpoint's `Preprocessing`: one eval pipeline for val, evaluate and predict,
and the training augmentations."""

from __future__ import annotations

import math

from ..preprocessing import Preprocessing


def _interp(name: str):
    from torchvision.transforms import InterpolationMode

    return InterpolationMode(name)


class ResizeCrop:
    """torchvision's Resize(resize) then CenterCrop(size) on a PIL image, resampling only the pixels the crop keeps.

    Pillow's same two passes (horizontal, then vertical) over the same source pixels, each limited to the crop's
    box: about 40% less resampling work. Filter positions computed from the box rather than the whole image can
    round a pixel one level apart (measured: max 1, on 0.03% of pixels, over the 398 hymenoptera photos at
    256/224 bicubic); train, evaluate and predict all use this one transform.
    """

    def __init__(self, resize: int, size: int, interpolation: str):
        from PIL import Image

        self.resize, self.size, self.method = resize, size, Image.Resampling[interpolation.upper()]

    def __call__(self, im):
        w, h, size, method = im.width, im.height, self.size, self.method
        # Resize's output (shorter side = resize, the longer one truncated) and CenterCrop's offsets, as torchvision
        rw, rh = (self.resize, int(self.resize * h / w)) if w <= h else (int(self.resize * w / h), self.resize)
        left, top = round((rw - size) / 2), round((rh - size) / 2)
        if method == method.NEAREST or min(left, top) < 0:
            # Pillow's nearest path picks other pixels given a box; a crop larger than the resize is padded
            from torchvision.transforms.functional import center_crop

            return center_crop(im.resize((rw, rh), method), [size])
        sx, sy = w / rw, h / rh
        x0, x1, y0, y1 = left * sx, (left + size) * sx, top * sy, (top + size) * sy
        reach = 3 * max(sy, 1.0) + 1  # beyond any filter's support (bicubic: 2 output pixels' worth of source)
        r0, r1 = max(0, math.floor(y0 - reach)), min(h, math.ceil(y1 + reach))
        rows = im.crop((0, r0, w, r1)).resize((size, r1 - r0), method, box=(x0, 0, x1, r1 - r0))  # horizontal
        return rows.resize((size, size), method, box=(0, y0 - r0, size, y1 - r0))  # vertical


def eval_transform(pre: Preprocessing):
    from torchvision import transforms as T

    crop = ResizeCrop(pre.resize, pre.size, pre.interpolation)
    return T.Compose([crop, T.ToTensor(), T.Normalize(pre.mean, pre.std)])


POLICIES = ("randaugment", "trivialaugment", "autoaugment")  # standard, then torchvision v2's policy


def train_transform(pre: Preprocessing, augment: str, random_erasing: float = 0.0):
    """augment: none (the eval pipeline), flip, standard (random resized crop + flip), or standard followed by
    RandAugment, TrivialAugmentWide or AutoAugment (ImageNet policy); random_erasing: the probability of
    erasing a rectangle of the normalised image. Random draws come from torch's RNG, seeded per sample
    (data.sampling.SeededDataset), so each image's augmentation repeats on resume."""
    from torchvision import transforms as T
    from torchvision.transforms import v2

    erase = [T.RandomErasing(random_erasing)] if random_erasing else []
    if augment == "none":
        return T.Compose([eval_transform(pre), *erase]) if erase else eval_transform(pre)
    if augment == "flip":
        crop = [ResizeCrop(pre.resize, pre.size, pre.interpolation)]
    else:
        crop = [T.RandomResizedCrop(pre.size, interpolation=_interp(pre.interpolation))]
    policy = {"randaugment": [v2.RandAugment()], "trivialaugment": [v2.TrivialAugmentWide()],
              "autoaugment": [v2.AutoAugment()]}.get(augment, [])
    return T.Compose([*crop, T.RandomHorizontalFlip(), *policy, T.ToTensor(), T.Normalize(pre.mean, pre.std),
                      *erase])


def draft_size(pre: Preprocessing, augment: str) -> int:
    """The smallest decode size (Pillow's JPEG draft mode) that loses nothing the transform keeps.

    Resize-then-crop needs the shorter side >= pre.resize. RandomResizedCrop may keep as little as 8% of
    the area (a side of sqrt(0.08) = 0.28x) and scale it up to pre.size, so it needs ~3.5x pre.size.
    """
    if augment == "standard" or augment in POLICIES:
        return max(pre.resize, math.ceil(pre.size / math.sqrt(0.08)))
    return pre.resize
