"""The Python API: functions on the package, which leave the host process as they found it."""

import inspect
import subprocess
import sys

import pytest


def test_public_api_is_functions_even_after_their_modules_are_imported():
    import finetune.deploy.evaluate  # noqa: F401  (what the CLI and tests import)
    import finetune.deploy.export  # noqa: F401
    import finetune.deploy.predict  # noqa: F401
    import finetune.train.loop  # noqa: F401

    for name in ("load_recipe", "fit", "predict", "evaluate", "export"):
        assert inspect.isfunction(getattr(finetune, name)), name
    assert finetune.__version__


SESSION = r"""
import gc, sys, warnings
import torch, torchvision, timm, numpy, PIL.Image, matplotlib  # their own import-time settings are not ours
import finetune
from pathlib import Path
torch.set_num_threads(2)
gc.collect()
state = lambda: (gc.isenabled(), gc.get_freeze_count(), torch.get_num_threads(), list(warnings.filters))
before = state()
run = finetune.fit(finetune.load_recipe(Path(sys.argv[1])))
after_fit = state()
preds = finetune.predict(run / "best.pt", sorted(Path(sys.argv[2]).rglob("*.png")), workers=0)
after_predict = state()
print("FIT", after_fit == before, "PREDICT", after_predict == before, len(preds))
"""

PREDICT_ONLY = r"""
import sys
from pathlib import Path
import finetune
finetune.predict(Path(sys.argv[1]), sorted(Path(sys.argv[2]).rglob("*.png")), workers=0)
print("TRAINING MODULES", sorted(m for m in sys.modules if m.startswith("finetune.train")))
"""


@pytest.mark.slow
def test_fit_and_predict_leave_the_interpreter_as_they_found_it(tiny_tree, image_folder, tmp_path):
    from conftest import write_yaml

    recipe = write_yaml(tmp_path / "tiny.yaml", tiny_tree)
    out = subprocess.run([sys.executable, "-c", SESSION, str(recipe), str(image_folder / "val")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-5:] == ["FIT", "True", "PREDICT", "True", "8"], out.stdout

    # predict loads no training code at all
    run = tmp_path / "runs" / "t"
    out = subprocess.run([sys.executable, "-c", PREDICT_ONLY, str(run / "best.pt"), str(image_folder / "val")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("TRAINING MODULES []"), out.stdout
