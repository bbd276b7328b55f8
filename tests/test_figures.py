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


def test_factor_bands_seed_dots_and_curve_panels(tmp_path):
    keys = [("final_avg_acc", "final"), ("forgetting", "forgetting"), ("bwt", "bwt"), ("avg_incremental_acc", "inc")]
    series = [{"label": m, "color": c, "x": [0, 1, 2], "y": {k: [0.5, 0.6, None] for k, _ in keys},
               "low": {k: [0.4, None, 0.6] for k, _ in keys}, "high": {k: [0.6, None, 1.0] for k, _ in keys},
               "seeds": {k: [[0.45, 0.55], [0.6], []] for k, _ in keys}}
              for m, c in (("er", "C0"), ("gradmix", None))]
    figures.draw_factor_bands(series, keys, ["100", "200", "500"], "memory.size", "t", tmp_path / "f.png",
                              ranges={"final_avg_acc": (0.0, 1.0)})
    figures.draw_factor_bands(series[:1], keys[:1], ["100", "200", "500"], "memory.size", "t", tmp_path / "f1.png")
    panel = {"title": "final", "values": [[0.7, 0.72, None], [0.8], []], "mean": [0.71, 0.8, None],
             "low": [0.6, None, None], "high": [0.82, None, None], "range": (0.0, 1.0)}
    figures.draw_seed_dots([panel, panel, panel], ["er\n100", "gradmix\n100", "x"], ["C0", "C1", "C2"], "dots",
                           tmp_path / "d.png", xlabel="method / memory.size")
    many = [f"arm number {i} with a long label" for i in range(12)]
    figures.draw_seed_dots([dict(panel, values=[[0.5, 0.6]] * 12, mean=[0.55] * 12, low=[0.4] * 12,
                                 high=[0.7] * 12)], many, ["C0"] * 12, "many", tmp_path / "m.png")
    line = {"label": "er", "steps": [1, 2, 3, 4], "acc": [0.5, 0.7, 0.8, 0.75], "peak_epoch": 3, "peak_acc": 0.8,
            "final_acc": 0.75}
    panel = {"title": "p", "steps": [1, 2, 3, 4], "task_of": [0, 0, 1, 1], "epochs_per_task": 2,
             "lines": [line, dict(line, label="gradmix", peak_epoch=None)]}
    figures.draw_curve_panels([panel, dict(panel, task_of=None), panel], "curves", tmp_path / "p.png")
    assert image(tmp_path / "f.png").shape[1] > 800 and image(tmp_path / "p.png").shape[0] > 500
    assert image(tmp_path / "f1.png").shape[1] > 400 and image(tmp_path / "d.png").shape[0] > 500
    assert image(tmp_path / "m.png").shape[1] > 1000


def test_drawn_without_pyplot_and_below_tracking_and_report(tmp_path):
    code = ("import sys; from gradmix_tune import figures; "
            f"figures.draw_accuracy_matrix([[0.5]], {str(tmp_path / 'x.png')!r}); "
            "print(sorted(m for m in ('matplotlib', 'matplotlib.pyplot', 'gradmix_tune.tracking', "
            "'gradmix_tune.report') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['matplotlib']"
