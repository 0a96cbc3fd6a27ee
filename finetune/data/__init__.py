"""Data: the folders and their split, images as correct RGB, transforms, sampling and loaders, per-file
checks and the dataset doctor. It knows nothing of models or training."""
