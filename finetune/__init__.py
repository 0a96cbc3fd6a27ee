"""finetune: transfer learning for image classification.

The small public API, imported lazily so `import finetune` (and the CLI's --help) stays fast:
    load_recipe(path, overrides) -> Recipe
    fit(recipe) -> run folder
    predict(source, paths, *, top_k=1, ...) -> [Prediction]
    evaluate(source, data, *, output=None, ...) -> Evaluation (and CSV/PNG/JSON files)
    export(checkpoint, format) -> ExportResult (onnx | torchscript | safetensors, parity-checked)
They live in the sub-packages (train.loop, deploy.predict, ...), so importing a module never replaces the
function of the same name on this package. A call changes nothing process-wide: the command line's process
tuning is finetune.runtime.process.tune_process.
"""

import importlib

__version__ = "0.1.0"

_API = {"load_recipe": "config", "fit": "train.loop", "predict": "deploy.predict", "evaluate": "deploy.evaluate",
        "export": "deploy.export"}
__all__ = [*_API, "__version__"]


def __getattr__(name):
    if name not in _API:
        raise AttributeError(f"module 'finetune' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
