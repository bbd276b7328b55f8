"""figures.py: every drawing is a valid PNG from plain data, with None/NaN gaps, drawn without
pyplot; the module stands below tracking/ and report/."""
from __future__ import annotations

import subprocess
import sys

import pytest

from gradmix_tune import figures

PNG = b"\x89PNG\r\n\x1a\n"


def image(path):
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG
    return imread(str(path))


def test_accuracy_and_s_matrices(tmp_path):
    figures.draw_accuracy_matrix([[0.9], [0.6, 0.8], [0.5, 0.7, 0.95]], tmp_path / "a.png", title="A")
    figures.draw_s_matrix([[0.1, -0.2, None], [0.3, 0.0, None], [None, None, None]], tmp_path / "s.png")
    figures.draw_s_matrix([[0.0]], tmp_path / "zero.png")  # no finite non-zero score: still a picture
    big = [[(a - b) / 10 for b in range(20)] for a in range(20)]  # no numbers written above 12 classes
    figures.draw_s_matrix(big, tmp_path / "big.png")
    for name in ("a", "s", "zero", "big"):
        img = image(tmp_path / f"{name}.png")
        assert img.ndim == 3 and min(img.shape[:2]) > 100


@pytest.mark.parametrize("task_of", [[0, 0, 0, 1, 1, 1], None, [0, 0, None, 1, 1, 1]])
def test_epoch_curve_with_or_without_the_tasks(tmp_path, task_of):
    acc = [0.5, 0.7, 0.6, 0.65, 0.8, None]
    figures.draw_epoch_curve(list(range(1, 7)), acc, [1.0, 0.8, None, 0.7, 0.6, 0.5], tmp_path / "c.png",
                             task_of=task_of, epochs_per_task=3)
    assert image(tmp_path / "c.png").shape[1] > 400


def test_factor_plot_and_curve_panels(tmp_path):
    keys = [("final_avg_acc", "final"), ("forgetting", "forgetting"), ("bwt", "bwt"), ("avg_incremental_acc", "inc")]
    series = [{"label": m, "x": [0, 1, 2], "y": {k: [0.5, 0.6, 0.7] for k, _ in keys},
               "err": {k: [0.01, 0.0, 0.02] for k, _ in keys}} for m in ("er", "gradmix")]
    figures.draw_factor_plot(series, keys, ["100", "200", "500"], "memory.size", "t", tmp_path / "f.png")
    line = {"label": "er", "steps": [1, 2, 3, 4], "acc": [0.5, 0.7, 0.8, 0.75], "peak_epoch": 3, "peak_acc": 0.8,
            "final_acc": 0.75}
    panel = {"title": "p", "steps": [1, 2, 3, 4], "task_of": [0, 0, 1, 1], "epochs_per_task": 2,
             "lines": [line, dict(line, label="gradmix", peak_epoch=None)]}
    figures.draw_curve_panels([panel, dict(panel, task_of=None), panel], "curves", tmp_path / "p.png")
    assert image(tmp_path / "f.png").shape[1] > 800 and image(tmp_path / "p.png").shape[0] > 500


def test_drawn_without_pyplot_and_below_tracking_and_report(tmp_path):
    code = ("import sys; from gradmix_tune import figures; "
            f"figures.draw_accuracy_matrix([[0.5]], {str(tmp_path / 'x.png')!r}); "
            "print(sorted(m for m in ('matplotlib', 'matplotlib.pyplot', 'gradmix_tune.tracking', "
            "'gradmix_tune.report') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['matplotlib']"
