"""The command line's process settings: applied by tune_process, each with its opt-out, and never by a library call."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # every test here starts a Python subprocess

CHECK = r"""
import gc, os, sys, warnings
from finetune.runtime import process, threads
before = (gc.get_freeze_count(), len(warnings.filters))
process.tune_process(("torch",))
frozen = gc.get_freeze_count() - before[0]
print("FROZEN", frozen > 10_000, "TUNING", threads.tuning_enabled(), "FILTERS", len(warnings.filters) > before[1])
"""


def run(env):
    import os

    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_tune_process_freezes_imports_and_turns_on_the_thread_policy():
    assert run({}) == "FROZEN True TUNING True FILTERS True"


def test_each_setting_has_an_opt_out():
    assert run({"FINETUNE_GC_FREEZE": "0", "FINETUNE_TUNE_THREADS": "0", "FINETUNE_KEEP_HEAP": "0"}) == \
        "FROZEN False TUNING False FILTERS True"


def test_importing_the_package_changes_nothing():
    code = ("import gc, warnings, torch, torchvision, timm, numpy, PIL.Image, matplotlib  # their own filters\n"
            "before = (gc.get_freeze_count(), list(warnings.filters))\n"
            "import finetune.train.loop, finetune.deploy.evaluate, finetune.deploy.export, finetune.data.doctor\n"
            "print(before == (gc.get_freeze_count(), list(warnings.filters)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "True", out.stderr
