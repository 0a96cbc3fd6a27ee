"""The frozen-feature store: the frozen prefix runs once per image, not once per epoch.

With feature-extract or last-stage, `train.prefix.split_frozen` cuts the model at its first trained module. The
prefix's outputs (the pooled features for feature-extract, the last stage's input for last-stage) are stored,
fp16 where they fit, memory-mapped when read, and keyed by everything that changes them (`key`). Whether they
are stored is the recipe's `config.FeaturePlan`: val always, train when it does not change between epochs (no
augmentation) or as K augmented views; otherwise the BatchNorm-folded frozen copy recomputes it every step.
Training then runs the same epoch loop on the model from the cut on, with the same sampler the image batches use,
so cached and uncached runs see the same batches in the same order.

- `key`: `FeatureKey`, what an entry is keyed by.
- `store`: `FeatureStore`, the entries on disk with their checksums; `FeatureSet`, one read back.
- `batches`: `CachedBatches` and `PrefixedBatches`, built from a dataset or batches and a sampler, given.
- `frozen`: `frozen_split` (the cut) and `FrozenFeatures` (a run's store: `batches`, `read_or_compute`).
"""
