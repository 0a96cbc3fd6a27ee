from finetune.checkpoint import Calibration
from finetune.train import curves as report
from finetune.train.curves import CurvesPlot

ROWS = [{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 0.9, "val_acc": 0.6, "lr_head": 1e-3}]


def test_curves_redraw_within_a_time_budget_and_always_at_the_end(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(report, "plot_curves", lambda path, rows: drawn.append(len(rows)))
    curves = CurvesPlot(tmp_path / "curves.png", budget=0.05, estimate=0.5)
    curves.update(ROWS)  # a first epoch shorter than 0.5 s / 5% = 10 s is not drawn yet
    curves.last -= 11  # as if the epoch had taken 11 s: now it is
    curves.update(ROWS)
    curves.cost = 60.0  # as if a plot took a minute: the next one waits 20 minutes
    curves.update(ROWS * 2)
    curves.update(ROWS * 3, final=True)
    assert drawn == [1, 3]


def test_curves_png_is_written(tmp_path):
    path = tmp_path / "curves.png"
    CurvesPlot(path).update(ROWS * 2, final=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_names_the_epoch_best_pt_holds(tmp_path):
    from rich.console import Console

    rows = [dict(ROWS[0], epoch=1, val_acc=0.96, val_loss=0.26, seconds=1.0),
            dict(ROWS[0], epoch=2, val_acc=0.96, val_loss=0.13, seconds=1.0)]
    calibration = Calibration(fitted=False, ece_before=0.1, ece_after=0.1, nll_before=0.2, nll_after=0.2)
    console = Console(record=True, width=120)
    report.print_run_summary(console, rows, calibration, tmp_path)
    assert "epoch 2: val acc 0.9600" in console.export_text()
