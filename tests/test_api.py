import inspect

import finetune


def test_public_api_is_functions_even_after_their_modules_are_imported():
    import finetune.evaluation  # noqa: F401  (what the CLI and tests import)
    import finetune.exporter  # noqa: F401
    import finetune.inference  # noqa: F401

    for name in ("load_recipe", "fit", "predict", "evaluate", "export"):
        assert inspect.isfunction(getattr(finetune, name)), name
    assert finetune.__version__
