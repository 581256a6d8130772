"""Contrastive Representation Distillation (CRD), with the memory banks it needs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mmdistill.distributed import all_gather_cat
from mmdistill.losses.terms import TERMS, FeatureParams, FeatureTerm, LossBatch
from mmdistill.models.net import ModelOutput, MultiModalNet, TaskInfo


class CRDParams(FeatureParams):
    feat_dim: int = Field(128, gt=0, description="size of the shared embedding space")
    nce_k: int = Field(4096, gt=0, description="negatives per sample (capped at train size - 1)")
    nce_t: float = Field(0.07, gt=0, description="softmax temperature")
    momentum: float = Field(0.5, ge=0, lt=1, description="memory update: m * old + (1 - m) * new, then L2-normalised")


@TERMS.register("crd")
class CRD(FeatureTerm):
    """Contrastive Representation Distillation, Tian et al. ICLR 2020, in its softmax (InfoNCE) form.

    Linear heads map student and teacher features to `feat_dim`, L2-normalised: z_s, z_t.
    Two memory banks M_s, M_t [n_data, feat_dim] hold one L2-normalised embedding per
    training sample (keyed by `batch.index`). For sample i with K negatives n_1..n_K drawn
    uniformly from the other training samples:
        L_s = -log( exp(z_s.z_t / tau) / (exp(z_s.z_t / tau) + sum_k exp(z_s.M_t[n_k] / tau)) )
        L_t = the same with the roles swapped (z_t against z_s and M_s)
        loss = mean_i (L_s + L_t)       (the paper also sums both directions)
    then M_s[i] <- normalise(m M_s[i] + (1 - m) z_s), likewise M_t (no gradient).
    Variant: the paper's NCE loss with a constant partition estimate Z is replaced by the exact
    softmax over 1 positive + K negatives, and the positive is the other model's *current*
    embedding (as in MoCo) rather than its memory entry, so the signal is meaningful from the
    first step instead of after one epoch of bank filling. Defaults: feat_dim 128, nce_t 0.07,
    momentum 0.5 as the authors; nce_k 4096 (theirs 16384, for CIFAR's 50k images). The heads
    train with the student (they are parameters of the objective); the paper weights CRD 0.8.
    The engine must call `set_dataset_size(len(train split))` before training.
    """

    Params = CRDParams
    match_dims = False
    needs_dataset_size = True

    def __init__(self, params: CRDParams, tasks: list[TaskInfo], student: MultiModalNet, teacher: MultiModalNet | None):
        super().__init__(params, tasks, student, teacher)
        assert teacher is not None
        self.embed_s = nn.Linear(student.feature_dim(params.student), params.feat_dim)
        self.embed_t = nn.Linear(teacher.feature_dim(params.teacher), params.feat_dim)
        self.n_data: int | None = None
        # persistent: a stage resumed from its last checkpoint continues with the banks it had
        self.register_buffer("memory_s", None)
        self.register_buffer("memory_t", None)
        # kept identical across DDP ranks by `_update`'s all-gather, so DDP need not copy these
        # n x d tensors from rank 0 before every step (train/module.StageModule.setup)
        self.gathered_buffers = ("memory_s", "memory_t")

    def set_dataset_size(self, n: int) -> None:
        """Size (and randomly initialise) both memory banks for a train split of n samples."""
        if n < 2:
            raise ValueError(f"crd: needs at least 2 training samples, got {n}")
        like = {"device": self.embed_s.weight.device, "dtype": self.embed_s.weight.dtype}
        self.n_data = int(n)
        self.memory_s = F.normalize(torch.randn(n, self.params.feat_dim, **like), dim=1)
        self.memory_t = F.normalize(torch.randn(n, self.params.feat_dim, **like), dim=1)

    def sample_negatives(self, index: torch.Tensor, k: int) -> torch.Tensor:
        """[B, k] indices drawn uniformly from 0..n_data-1 without each row's own index."""
        assert self.n_data is not None
        draw = torch.randint(0, self.n_data - 1, (len(index), k), device=index.device)
        return draw + (draw >= index.unsqueeze(1)).long()

    def embed(self, student: ModelOutput, teacher: ModelOutput) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self.pair(student, teacher)
        return F.normalize(self.embed_s(s), dim=1), F.normalize(self.embed_t(t), dim=1)

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: LossBatch) -> torch.Tensor:
        assert teacher is not None
        if batch.index is None:
            raise ValueError("crd: the batch has no `index` (each sample's position in the train split); "
                             "the memory banks are keyed by it")
        if self.memory_s is None or self.n_data is None:
            raise RuntimeError("crd: the memory banks are not sized; call objective.set_dataset_size(n) "
                               "with the number of training samples before training")
        index = batch.index.to(self.memory_s.device).long()
        # checked where it is free (indices on the CPU) or once: on a GPU each check waits for it
        check = not index.is_cuda or not getattr(self, "_index_checked", False)
        self._index_checked = True
        if check and len(index) and (int(index.min()) < 0 or int(index.max()) >= self.n_data):
            raise ValueError(f"crd: batch index out of range 0..{self.n_data - 1} (got {int(index.min())}.."
                             f"{int(index.max())}); was set_dataset_size given the train split's size?")
        z_s, z_t = self.embed(student, teacher)
        k = min(self.params.nce_k, self.n_data - 1)
        negatives = self.sample_negatives(index, k)
        tau = self.params.nce_t
        positive = (z_s * z_t).sum(1, keepdim=True)
        logits_s = torch.cat([positive, torch.einsum("bd,bkd->bk", z_s, self.memory_t[negatives].to(z_s.dtype))], 1)
        logits_t = torch.cat([positive, torch.einsum("bd,bkd->bk", z_t, self.memory_s[negatives].to(z_t.dtype))], 1)
        target = torch.zeros(len(index), dtype=torch.long, device=z_s.device)
        loss = F.cross_entropy(logits_s / tau, target) + F.cross_entropy(logits_t / tau, target)
        if self.training:
            self._update(index, z_s.detach(), z_t.detach())
        return loss

    @torch.no_grad()
    def _update(self, index: torch.Tensor, z_s: torch.Tensor, z_t: torch.Tensor) -> None:
        """Momentum update of the rows of this step's samples; under DDP with every rank's
        samples (all-gathered), so the banks stay identical on every rank."""
        index, z_s, z_t = all_gather_cat(index), all_gather_cat(z_s), all_gather_cat(z_t)
        m = self.params.momentum
        for bank, z in ((self.memory_s, z_s), (self.memory_t, z_t)):
            bank[index] = F.normalize(m * bank[index] + (1 - m) * z.to(bank.dtype), dim=1)
