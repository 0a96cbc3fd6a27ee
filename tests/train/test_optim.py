import pytest

from finetune.config import ScheduleSpec
from finetune.train.optim import lr_factor


def test_constant_and_warmup():
    spec = ScheduleSpec(name="constant", warmup_epochs=1)
    assert [lr_factor(s, 4, 3, spec) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_step():
    spec = ScheduleSpec(name="step", step_size=2, gamma=0.5)
    assert [lr_factor(e * 10, 10, 6, spec) for e in range(6)] == [1, 1, 0.5, 0.5, 0.25, 0.25]


def test_cosine_goes_from_one_to_min():
    spec = ScheduleSpec(name="cosine", min_factor=0.1)
    assert lr_factor(0, 10, 5, spec) == pytest.approx(1.0)
    assert lr_factor(25, 10, 5, spec) == pytest.approx(0.55)
    assert lr_factor(50, 10, 5, spec) == pytest.approx(0.1)
