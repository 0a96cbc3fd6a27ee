"""Using a trained model: loading it from a checkpoint, predict, evaluate and export. It needs only a
checkpoint and never imports `train`."""
