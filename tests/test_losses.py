"""Each loss term against an independent numpy computation on fixed numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmdistill.config.schema import ModelSpec, ImageModality
from mmdistill.losses.objective import build_objective
from mmdistill.losses.terms import (FeatureCosine, FeatureL2, FeatureL2Params, FeatureParams, KDParams, LogitKD, LossBatch, TaskLoss,
                                    TaskParams)
from mmdistill.models.net import ModelOutput, MultiModalNet, TaskInfo

MC = TaskInfo("m", "multiclass", ("a", "b", "c"))
BIN = TaskInfo("b", "binary", ("0", "1"))
S_LOGITS = np.array([[1.0, -0.5, 0.3], [0.2, 0.1, -1.0]])
T_LOGITS = np.array([[2.0, 0.5, -0.3], [-0.4, 1.5, 0.0]])
S_BIN = np.array([0.3, -1.2])
T_BIN = np.array([1.5, 0.4])
Y_MC = np.array([0, 2])
Y_BIN = np.array([1.0, 0.0])


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _out(logits_mc, logits_bin, fused=None):
    return ModelOutput(logits={"m": torch.tensor(logits_mc, dtype=torch.float64, requires_grad=True),
                               "b": torch.tensor(logits_bin, dtype=torch.float64, requires_grad=True)},
                       fused=None if fused is None else torch.tensor(fused, dtype=torch.float64, requires_grad=True))


LABELS = LossBatch({"m": torch.tensor(Y_MC), "b": torch.tensor(Y_BIN, dtype=torch.float64)})


def test_task_loss_is_mean_of_ce_and_bce():
    ce = np.mean([-np.log(_softmax(S_LOGITS)[i, Y_MC[i]]) for i in range(2)])
    p = _sigmoid(S_BIN)
    bce = np.mean(-(Y_BIN * np.log(p) + (1 - Y_BIN) * np.log(1 - p)))
    loss = TaskLoss(TaskParams(), [MC, BIN], None, None)(_out(S_LOGITS, S_BIN), None, LABELS)
    assert loss.item() == pytest.approx((ce + bce) / 2, rel=1e-9)


def test_label_smoothing_matches_hand_computation():
    eps = 0.1
    q = np.full((2, 3), eps / 3)
    q[np.arange(2), Y_MC] += 1 - eps
    expected = np.mean(-(q * np.log(_softmax(S_LOGITS))).sum(-1))
    loss = TaskLoss(TaskParams(label_smoothing=eps), [MC], None, None)(_out(S_LOGITS, S_BIN), None, LABELS)
    assert loss.item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_matches_hinton_formula(T):
    pt, ps = _softmax(T_LOGITS / T), _softmax(S_LOGITS / T)
    kl_mc = np.mean((pt * (np.log(pt) - np.log(ps))).sum(-1)) * T * T
    bt, bs = _sigmoid(T_BIN / T), _sigmoid(S_BIN / T)
    kl_bin = np.mean(bt * np.log(bt / bs) + (1 - bt) * np.log((1 - bt) / (1 - bs))) * T * T
    term = LogitKD(KDParams(temperature=T), [MC, BIN], None, None)
    student = _out(S_LOGITS, S_BIN)
    loss = term(student, _out(T_LOGITS, T_BIN), LABELS)
    assert loss.item() == pytest.approx((kl_mc + kl_bin) / 2, rel=1e-9)
    loss.backward()
    assert torch.isfinite(student.logits["m"].grad).all() and student.logits["m"].grad.abs().sum() > 0


def test_kd_is_zero_when_student_equals_teacher_and_invariant_to_logit_shift():
    term = LogitKD(KDParams(temperature=2.0), [MC], None, None)
    assert term(_out(T_LOGITS, T_BIN), _out(T_LOGITS, T_BIN), LABELS).item() == pytest.approx(0.0, abs=1e-12)
    base = term(_out(S_LOGITS, S_BIN), _out(T_LOGITS, T_BIN), LABELS).item()
    shifted = term(_out(S_LOGITS + 5.0, S_BIN), _out(T_LOGITS - 3.0, T_BIN), LABELS).item()
    assert shifted == pytest.approx(base, rel=1e-9)


class _Dims:
    """Stands in for a model: only feature_dim is read when building feature terms."""

    def __init__(self, dim):
        self.dim = dim

    def feature_dim(self, name):
        return self.dim


def test_feature_l2_and_cosine_match_numpy():
    hs = np.array([[1.0, 2.0, 0.0], [0.5, -1.0, 2.0]])
    ht = np.array([[0.0, 2.0, 1.0], [1.0, 1.0, 1.0]])
    l2 = FeatureL2(FeatureL2Params(), [MC], _Dims(3), _Dims(3))
    cos = FeatureCosine(FeatureParams(), [MC], _Dims(3), _Dims(3))
    s, t = _out(S_LOGITS, S_BIN, hs), _out(T_LOGITS, T_BIN, ht)
    assert l2(s, t, LABELS).item() == pytest.approx(np.mean((hs - ht) ** 2), rel=1e-9)
    cosines = (hs * ht).sum(1) / np.linalg.norm(hs, axis=1) / np.linalg.norm(ht, axis=1)
    assert cos(s, t, LABELS).item() == pytest.approx(np.mean(1 - cosines), rel=1e-9)
    scaled = _out(S_LOGITS, S_BIN, hs * 7.0)
    assert cos(scaled, t, LABELS).item() == pytest.approx(np.mean(1 - cosines), rel=1e-9)


def test_feature_l2_sum_is_seed_003s_squared_distance_per_sample():
    """||h_t - h_s||^2 per sample, averaged over the batch: D times the mean reduction."""
    hs = np.array([[1.0, 2.0, 0.0], [0.5, -1.0, 2.0]])
    ht = np.array([[0.0, 2.0, 1.0], [1.0, 1.0, 1.0]])
    l2 = FeatureL2(FeatureL2Params(reduction="sum"), [MC], _Dims(3), _Dims(3))
    value = l2(_out(S_LOGITS, S_BIN, hs), _out(T_LOGITS, T_BIN, ht), LABELS).item()
    assert value == pytest.approx(np.mean(np.sum((hs - ht) ** 2, axis=1)), rel=1e-9)
    assert value == pytest.approx(3 * np.mean((hs - ht) ** 2), rel=1e-9)


def test_feature_term_learns_a_projection_when_dims_differ():
    term = FeatureL2(FeatureL2Params(), [MC], _Dims(2), _Dims(3))
    assert isinstance(term.regressor, torch.nn.Linear) and term.regressor.in_features == 2
    assert sum(p.numel() for p in term.parameters()) == 2 * 3 + 3


def test_objective_sums_weighted_terms():
    spec = ModelSpec.model_validate({"encoders": {"image": {"type": "tiny_cnn", "widths": [4]}}, "projection_dim": 4})
    mods = {"image": ImageModality(kind="image", column="x", size=8)}
    net = MultiModalNet(spec, mods, [MC, BIN])
    objective = build_objective("kl_bce", None, [MC, BIN], net, net)
    s, t = _out(S_LOGITS, S_BIN), _out(T_LOGITS, T_BIN)
    total, parts = objective(s, t, LABELS)
    kd = LogitKD(KDParams(temperature=4.0), [MC, BIN], None, None)(s, t, LABELS)
    task = TaskLoss(TaskParams(), [MC, BIN], None, None)(s, t, LABELS)
    assert parts["kd_logits"].item() == pytest.approx(0.7 * kd.item())
    assert total.item() == pytest.approx(0.7 * kd.item() + 0.3 * task.item())
