"""Relational and distributional feature terms: they compare how samples in a batch relate
to each other (distances, angles, similarities) or how the batch is distributed, rather than
each student vector with its teacher vector.

Relational terms (contrastive_dist, pkt, sp, rkd) compare a B x B (or B x B x B) structure
computed inside each model, so the student and teacher features may have different sizes and
no regressor is learned. MMD compares the two samples directly in one kernel space, so it uses
FeatureTerm's linear map when the sizes differ. All of them read `fused` by default
(`student`/`teacher`: `fused`, `projection:<modality>` or `embedding:<modality>`).

A batch of one sample has no pairs: every term here returns 0 for it (the last batch of an
epoch can have a single sample).

They all compute in float32 whatever the training precision (`full_precision`): a distance
from a bf16 matmul, ||x||^2 + ||y||^2 - 2 x.y, keeps 8 bits of mantissa, so close samples get
distances of pure rounding noise and the relations these terms match are lost.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from mmdistill.losses.terms import TERMS, FeatureParams, FeatureTerm, LossBatch
from mmdistill.models.net import ModelOutput


def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """||x_i - y_j||^2 [B, B'] from the norms and one matmul (not the B x B' x D of differences);
    may dip just below 0 by rounding, so callers clamp."""
    return (x * x).sum(-1, keepdim=True) + (y * y).sum(-1) - 2 * x @ y.t()


def pairwise_distances(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distances [B, B] with an exact zero diagonal and a finite gradient at 0
    (the authors' RKD `pdist`: the squared distance is clamped before the square root)."""
    d2 = squared_distances(x, x).clamp(min=eps)
    eye = torch.eye(len(x), dtype=torch.bool, device=x.device)
    return d2.sqrt().masked_fill(eye, 0.0)


def full_precision(forward: Callable) -> Callable:
    """Run a term's forward with autocast off and its features in float32."""

    @functools.wraps(forward)
    def run(self: Any, student: ModelOutput, teacher: ModelOutput | None, batch: LossBatch) -> torch.Tensor:
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            return forward(self, student, teacher, batch)

    return run


def _at_least32(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _pair32(term: FeatureTerm, student: ModelOutput, teacher: ModelOutput) -> tuple[torch.Tensor, torch.Tensor]:
    s = _at_least32(student.feature(term.params.student))
    return term.regressor(s), _at_least32(teacher.feature(term.params.teacher).detach())


def _zero(x: torch.Tensor) -> torch.Tensor:
    """A zero that keeps the graph (for batches too small to have pairs)."""
    return x.sum() * 0.0


class RelationalTerm(FeatureTerm):
    """A FeatureTerm without the regressor: student and teacher sizes may differ; features in
    float32, and each subclass's forward under `full_precision`."""

    match_dims = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "forward" in cls.__dict__:
            cls.forward = full_precision(cls.__dict__["forward"])

    def pair(self, student: ModelOutput, teacher: ModelOutput) -> tuple[torch.Tensor, torch.Tensor]:
        return _pair32(self, student, teacher)


@TERMS.register("contrastive_dist")
class ContrastiveDistance(RelationalTerm):
    """Seed 002's "contrastive" term: MSE between row-normalised pairwise distance matrices.

    D_ij = ||h_i - h_j||_2 within the batch, for student and teacher separately;
    N_ij = D_ij / mean_{k != i} D_ik, i.e. each row divided by its row sum and multiplied by
    B-1 (row-sum normalisation rescaled so entries are O(1) whatever the batch size; plain
    row-sum entries are O(1/B) and their squared errors O(1/B^2), too small to matter at
    the seed's weight 0.2). loss = mean_{i,j} (N^s_ij - N^t_ij)^2.
    Invariant to a global rescaling of either model's features.
    """

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: LossBatch) -> torch.Tensor:
        s, t = self.pair(student, teacher)
        if len(s) < 2:
            return _zero(s)

        def normalise(d: torch.Tensor) -> torch.Tensor:
            return d / (d.sum(1, keepdim=True) / (len(d) - 1)).clamp(min=1e-12)

        return F.mse_loss(normalise(pairwise_distances(s)), normalise(pairwise_distances(t)))


class PKTParams(FeatureParams):
    eps: float = Field(1e-7, gt=0, description="added inside the log ratio, as in the authors' code")


@TERMS.register("pkt")
class ProbabilisticKT(RelationalTerm):
    """Probabilistic Knowledge Transfer, Passalis & Tefas ECCV 2018: KL(P_t || P_s) of cosine-kernel conditionals.

    K_ij = (cos(h_i, h_j) + 1) / 2 within the batch (diagonal included),
    P_{j|i} = K_ij / sum_k K_ik (row-normalised), and, as in the authors' code,
    loss = mean_{i,j} P^t_{j|i} log((P^t_{j|i} + eps) / (P^s_{j|i} + eps))
         = (1/B) * mean_i KL(P^t_{.|i} || P^s_{.|i})   (up to eps).
    Invariant to rescaling the features (cosine kernel).
    """

    Params = PKTParams

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: LossBatch) -> torch.Tensor:
        s, t = self.pair(student, teacher)
        eps = self.params.eps

        def conditionals(x: torch.Tensor) -> torch.Tensor:
            x = F.normalize(x, dim=1, eps=1e-12)
            k = (x @ x.t() + 1) / 2
            return k / k.sum(1, keepdim=True)

        p_s, p_t = conditionals(s), conditionals(t)
        return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


@TERMS.register("sp")
class SimilarityPreserving(RelationalTerm):
    """Similarity-Preserving KD, Tung & Mori ICCV 2019: ||norm(G_s) - norm(G_t)||_F^2 / B^2.

    G = H H^T (B x B Gram matrix of the batch's features), norm(G) divides each row by its
    L2 norm. Invariant to rescaling either model's features.
    """

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: LossBatch) -> torch.Tensor:
        s, t = self.pair(student, teacher)
        g_s = F.normalize(s @ s.t(), dim=1)
        g_t = F.normalize(t @ t.t(), dim=1)
        return ((g_s - g_t) ** 2).sum() / (len(s) ** 2)


class RKDParams(FeatureParams):
    distance_weight: float = Field(1.0, ge=0, description="weight of the distance loss")
    angle_weight: float = Field(2.0, ge=0, description="weight of the angle loss")


@TERMS.register("rkd")
class RelationalKD(RelationalTerm):
    """Relational KD, Park et al. CVPR 2019: w_d * L_distance + w_a * L_angle, both smooth-L1 (Huber, delta=1).

    distance: psi_ij = ||h_i - h_j|| / mu, mu = mean of the non-zero distances in the batch;
              L_distance = mean over all B^2 pairs of huber(psi^s_ij, psi^t_ij)
    angle:    e_ij = (h_i - h_j) / ||h_i - h_j||, psi_ijk = <e_ij, e_kj> (the cosine of the
              angle at j); L_angle = mean over all B^3 triplets of huber(psi^s, psi^t)
              (degenerate triplets have e = 0 in both models and add 0, as in the authors' code)
    Defaults w_d = 1, w_a = 2 are the authors' code defaults; the paper's experiments use 25 and
    50 (the same ratio), which you get with the term's `weight` = 25.
    Both parts are invariant to rescaling either model's features (mean-distance normalisation;
    angles are scale-free).
    """

    Params = RKDParams

    @staticmethod
    def _distances(x: torch.Tensor) -> torch.Tensor:
        d = pairwise_distances(x)
        positive = d > 0
        mu = (d * positive).sum() / positive.sum().clamp(min=1)
        return d / mu.clamp(min=1e-12)

    @staticmethod
    def _angles(x: torch.Tensor) -> torch.Tensor:
        e = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)  # e[j, i] = unit(h_i - h_j)
        return torch.bmm(e, e.transpose(1, 2)).view(-1)  # [j, i, k] = <e_ij, e_kj>

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: LossBatch) -> torch.Tensor:
        s, t = self.pair(student, teacher)
        if len(s) < 2:
            return _zero(s)
        loss = _zero(s)
        if self.params.distance_weight:
            loss = loss + self.params.distance_weight * F.smooth_l1_loss(self._distances(s), self._distances(t))
        if self.params.angle_weight:
            loss = loss + self.params.angle_weight * F.smooth_l1_loss(self._angles(s), self._angles(t))
        return loss


class MMDParams(FeatureParams):
    sigmas: list[float] = Field(default_factory=lambda: [1.0, 2.0, 4.0, 8.0, 16.0],
                                description="Gaussian kernel bandwidths; the kernel is their sum")

    @field_validator("sigmas")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if not value or min(value) <= 0:
            raise ValueError("give at least one bandwidth, all positive")
        return value


@TERMS.register("mmd")
class MaximumMeanDiscrepancy(FeatureTerm):
    """MMD^2 between the batch of student and teacher features, Gretton et al. JMLR 2012 (unbiased estimate).

    k(x, y) = sum_sigma exp(-||x - y||^2 / (2 sigma^2)) (a multi-bandwidth Gaussian kernel);
    MMD^2_u = 1/(B(B-1)) sum_{i!=j} [k(s_i, s_j) + k(t_i, t_j)] - 2/B^2 sum_{i,j} k(s_i, t_j)
    with s = r(h_s) (the linear map when sizes differ) and t = h_t. It matches the two
    distributions, not individual samples; the unbiased estimate can be slightly negative.
    Bandwidths are absolute: features of size D with unit-scale entries have squared
    distances around 2D, so the defaults (1..16) suit D up to a few hundred.
    """

    Params = MMDParams

    @full_precision
    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: LossBatch) -> torch.Tensor:
        s, t = _pair32(self, student, teacher)
        b = len(s)
        if b < 2:
            return _zero(s)

        def kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            d2 = squared_distances(x, y).clamp(min=0)
            return sum(torch.exp(-d2 / (2 * sigma**2)) for sigma in self.params.sigmas)

        off = ~torch.eye(b, dtype=torch.bool, device=s.device)
        k_ss, k_tt, k_st = kernel(s, s), kernel(t, t), kernel(s, t)
        return (k_ss[off].sum() + k_tt[off].sum()) / (b * (b - 1)) - 2 * k_st.mean()
