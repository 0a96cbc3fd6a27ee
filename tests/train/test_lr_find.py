"""lr-find: a sweep from a fresh model, its CSV and plot in a new folder, and no existing run touched."""

import csv

import pytest

from finetune.config import build_recipe
from finetune.train.loop import fit
from finetune.train.lr_find import lr_find, suggest


@pytest.mark.slow
def test_lr_find_writes_its_curve_and_touches_no_run(tiny_tree, tmp_path):
    run = fit(build_recipe(tiny_tree))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    tiny_tree["strategy"] = {"name": "last-stage", "lr": {"head": 0.01, "last_stage": 0.001}}
    result = lr_find(build_recipe(tiny_tree), steps=20)
    assert result.folder == tmp_path / "runs" / "lr-find-t"
    rows = list(csv.DictReader((result.folder / "lr_find.csv").open()))
    assert 3 <= len(rows) <= 20 and float(rows[0]["lr_head"]) == 1e-7
    assert (result.folder / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.group_lrs["last_stage"] == result.suggestion / 10  # the recipe's ratio
    assert "--set strategy.lr.head=" in result.set_line
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert lr_find(build_recipe(tiny_tree), steps=10).folder.name == "lr-find-t-2"  # never over an earlier one


def test_the_suggestion_is_a_tenth_of_the_lr_at_the_minimum_past_the_first_steps():
    lrs = [10 ** (-6 + i / 4) for i in range(25)]
    loss = [0.1] + [1.0] * 9 + [1.0 - 0.05 * i ** 2 for i in range(1, 5)] + [0.15, 0.3] + [2.0] * 9  # low at 14
    assert suggest(lrs, loss) == pytest.approx(lrs[14] / 10)  # the unsettled first step does not count


def test_a_runaway_number_of_steps_is_refused_before_any_work(tiny_tree, tmp_path):
    from finetune.errors import ConfigError

    with pytest.raises(ConfigError, match=r"lr-find --steps 100000000: the sweep takes 10 to 10,000 steps"):
        lr_find(build_recipe(tiny_tree), tmp_path / "sweep", steps=100_000_000)
    assert not (tmp_path / "sweep").exists()
