"""The CIL summary numbers on hand-computed accuracy matrices (definitions in DESIGN.md).

A[i][j] = accuracy on task j after training task i; row i has entries for j <= i.
"""
import pytest

from gradmix_tune import metrics

# Three tasks, plain forgetting.
A = [[0.9],
     [0.6, 0.8],
     [0.5, 0.7, 0.95]]
# final:        (0.5 + 0.7 + 0.95) / 3                      = 0.716667
# incremental:  (0.9 + (0.6 + 0.8) / 2 + 2.15 / 3) / 3      = (0.9 + 0.7 + 0.716667) / 3 = 0.772222
# forgetting:   task 0: max(0.9, 0.6) - 0.5 = 0.4; task 1: 0.8 - 0.7 = 0.1; mean 0.25
# BWT:          ((0.5 - 0.9) + (0.7 - 0.8)) / 2             = -0.25

# Three tasks where an old task first improves: forgetting uses the best earlier accuracy,
# BWT the accuracy right after learning it, so they are not each other's negatives.
B = [[0.5],
     [0.9, 0.6],
     [0.7, 0.6, 0.8]]
# final 0.7; incremental (0.5 + 0.75 + 0.7) / 3 = 0.65
# forgetting: task 0: max(0.5, 0.9) - 0.7 = 0.2; task 1: 0.6 - 0.6 = 0; mean 0.1
# BWT: ((0.7 - 0.5) + (0.6 - 0.6)) / 2 = +0.1


def test_final_average_accuracy():
    assert metrics.final_avg_acc(A) == pytest.approx(2.15 / 3)
    assert metrics.final_avg_acc(B) == pytest.approx(0.7)


def test_average_incremental_accuracy():
    assert metrics.avg_incremental_acc(A) == pytest.approx((0.9 + 0.7 + 2.15 / 3) / 3)
    assert metrics.avg_incremental_acc(B) == pytest.approx(0.65)


def test_forgetting_uses_the_best_earlier_accuracy():
    assert metrics.forgetting(A) == pytest.approx(0.25)
    assert metrics.forgetting(B) == pytest.approx(0.1)


def test_backward_transfer():
    assert metrics.bwt(A) == pytest.approx(-0.25)
    assert metrics.bwt(B) == pytest.approx(0.1)  # positive: learning task 1 helped task 0


def test_single_task_has_no_forgetting_and_no_bwt():
    s = metrics.summarize([[0.83]])
    assert s == {"final_avg_acc": pytest.approx(0.83), "avg_incremental_acc": pytest.approx(0.83),
                 "forgetting": 0.0, "bwt": 0.0}


def test_forgetting_is_not_clamped_when_old_tasks_improve():
    # DESIGN.md: forgetting_j = max_{i<T} A[i][j] - A[T][j], no max(0, .): a gain shows as negative
    m = [[0.8], [0.8, 0.9], [0.85, 0.9, 1.0]]
    assert metrics.forgetting(m) == pytest.approx(((0.8 - 0.85) + (0.9 - 0.9)) / 2)
    assert metrics.bwt(m) == pytest.approx(((0.85 - 0.8) + (0.9 - 0.9)) / 2)


def test_full_fine_tuning_forgetting():
    # fine-tuning on 5 tasks: each old task drops from 1 to 0
    m = [[1.0 if j == i else 0.0 for j in range(i + 1)] for i in range(5)]
    assert metrics.final_avg_acc(m) == pytest.approx(0.2)
    assert metrics.forgetting(m) == pytest.approx(1.0)
    assert metrics.bwt(m) == pytest.approx(-1.0)
    assert metrics.avg_incremental_acc(m) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4 + 1 / 5) / 5)


def test_square_matrix_entries_for_unseen_tasks_are_ignored():
    # some tools log A[i][j] for j > i too (accuracy on tasks not trained yet): not part of any metric
    square = [[0.9, 0.1, 0.2], [0.6, 0.8, 0.3], [0.5, 0.7, 0.95]]
    assert metrics.summarize(square) == pytest.approx(metrics.summarize(A))


def test_summarize_has_the_four_numbers():
    assert metrics.summarize(A) == {"final_avg_acc": pytest.approx(2.15 / 3),
                                    "avg_incremental_acc": pytest.approx((0.9 + 0.7 + 2.15 / 3) / 3),
                                    "forgetting": pytest.approx(0.25), "bwt": pytest.approx(-0.25)}


def test_curve_peak_is_u_shape_of_the_last_task_on_the_global_axis():
    # 3 tasks x 3 epochs; the learner's peak_epoch is u_shape over the last task's epochs (1-based)
    curve = [0.9, 0.8, 0.85, 0.6, 0.7, 0.65, 0.5, 0.7, 0.7]
    steps = list(range(1, 10))
    last = metrics.u_shape(curve[6:])
    assert last["peak_epoch"] == 2.0  # ties: the first epoch wins
    for pk in (metrics.curve_peak(steps, curve, epochs_per_task=3),
               metrics.curve_peak(steps, curve, task_of={s: (s - 1) // 3 for s in steps})):
        assert pk["peak_epoch"] == 6 + last["peak_epoch"]
        assert pk["peak_acc"] == last["peak_acc"] and pk["drop"] == last["u_shape_drop"] == 0.0
        assert pk["mean_task_drop"] == pytest.approx((0.05 + 0.05 + 0.0) / 3)
    # one task: the same number on both axes
    one = [0.5, 0.9, 0.6]
    assert metrics.curve_peak([1, 2, 3], one)["peak_epoch"] == metrics.u_shape(one)["peak_epoch"] == 2
    assert metrics.curve_peak([], [])["peak_epoch"] is None
