"""finetune: transfer learning for image classification.

The small public API, imported lazily so `import finetune` (and the CLI's --help) stays fast:
    load_recipe(path, overrides) -> Recipe
    fit(recipe) -> run folder
    predict(checkpoint, paths) -> [Prediction]
    evaluate(checkpoint, data) -> report dict (and CSV/PNG/JSON files)
    export(checkpoint, format) -> ExportResult (onnx | torchscript | safetensors, parity-checked)
"""

__version__ = "0.1.0"

__all__ = ["load_recipe", "fit", "predict", "evaluate", "export", "__version__"]


def __getattr__(name):
    if name == "load_recipe":
        from .config import load_recipe

        return load_recipe
    if name == "fit":
        from .engine import fit

        return fit
    if name == "predict":
        from .predict import predict

        return predict
    if name == "evaluate":
        from .evaluate import evaluate

        return evaluate
    if name == "export":
        from .export import export

        return export
    raise AttributeError(name)
