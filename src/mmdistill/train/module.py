"""The LightningModule for one training stage.

The same module trains the teacher (task loss), the KD student (teacher outputs from a frozen
teacher or its cache, objective from config) and the baseline student (task loss): the stages
differ only in the objective and in whether a teacher is attached. The whole step fits on one screen, on purpose.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

from mmdistill.config.monitor import monitor_mode, monitor_value
from mmdistill.config.schema import StageTraining
from mmdistill.eval.metrics import evaluate
from mmdistill.losses.objective import Objective
from mmdistill.losses.terms import LossBatch
from mmdistill.models.net import ModelOutput, MultiModalNet, TaskInfo
from mmdistill.train.optim import build_optimizer


def channels_last_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """The image tensors ([B, C, H, W]) of a batch in channels-last memory format, the rest as
    they are: a channels-last model fed NCHW images converts them at every conv."""
    return {k: v.contiguous(memory_format=torch.channels_last) if torch.is_tensor(v) and v.dim() == 4 else v
            for k, v in inputs.items()}


class OutputCollector:
    """Gathers logits and labels over an evaluation pass. They stay on the device they were
    computed on until `metrics`: a copy to the host per batch would make the host wait for the
    GPU at every step; one copy per pass is all the metrics need (dev logits are small)."""

    def __init__(self) -> None:
        self.logits: dict[str, list[torch.Tensor]] = {}
        self.labels: dict[str, list[torch.Tensor]] = {}

    def add(self, output: ModelOutput, labels: dict[str, torch.Tensor]) -> None:
        for task, value in output.logits.items():
            self.logits.setdefault(task, []).append(value.detach().float())
            self.labels.setdefault(task, []).append(labels[task].detach())

    def metrics(self, tasks: list[TaskInfo]) -> dict[str, Any]:
        return evaluate(tasks, {k: torch.cat(v).cpu() for k, v in self.logits.items()},
                        {k: torch.cat(v).cpu() for k, v in self.labels.items()})


class StageModule(L.LightningModule):
    def __init__(self, stage: str, model: MultiModalNet, objective: Objective, training: StageTraining,
                 teacher: nn.Module | None = None, dev_teacher: nn.Module | None = None, channels_last: bool = False):
        """`teacher`: where the KD stage's teacher outputs come from, called with the batch
        (`train/teachers.py`: the frozen teacher on the fly, or its cached outputs);
        `dev_teacher`: the same for dev batches, for the dev loss. `channels_last`: image
        batches (and the model, `train/fit.py`) in channels-last memory format."""
        super().__init__()
        self.stage = stage
        self.model = model
        self.objective = objective
        self.training_cfg = training
        self.teacher = teacher if objective.needs_teacher else None
        self.dev_teacher = dev_teacher if objective.needs_teacher else None
        self.dev_metrics: dict[str, Any] | None = None
        self._dev_loss_sum, self._dev_count = 0.0, 0
        self._sums: dict[str, torch.Tensor] = {}  # on the device: read once per epoch, not per step
        self._count = 0
        self._collector = OutputCollector()
        self.channels_last = channels_last

    def setup(self, stage: str) -> None:
        """Before DDP wraps the module: buffers that their owner keeps in sync across ranks
        itself (CRD's memory banks) are left out of DDP's per-step buffer broadcast."""
        self._ddp_params_and_buffers_to_ignore = [
            f"{prefix}.{name}" if prefix else name for prefix, module in self.named_modules()
            for name in getattr(module, "gathered_buffers", ())]

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.channels_last:
            batch["inputs"] = channels_last_inputs(batch["inputs"])
        return batch

    # --- training
    def on_train_start(self) -> None:
        total = self.trainer.estimated_stepping_batches
        self._total_steps = int(total) if total != float("inf") else None

    def progress(self) -> float:
        """0 at the first optimizer step of the stage, 1 at the last (term weight schedules)."""
        total = getattr(self, "_total_steps", None)
        if not total:
            return self.current_epoch / max(self.training_cfg.epochs, 1)
        return min(1.0, self.global_step / max(total - 1, 1))

    def on_train_epoch_start(self) -> None:
        self._sums, self._count = {}, 0

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        student = self.model(batch["inputs"])
        teacher = self.teacher(batch) if self.teacher is not None else None
        progress = self.progress()
        loss, parts = self.objective(student, teacher, LossBatch(batch["labels"], batch["index"], progress))
        n = len(batch["index"])
        self._count += n
        for name, value in {"loss": loss, **parts}.items():
            self._sums[name] = self._sums.get(name, 0.0) + value.detach().double() * n
        self.log("loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=n)
        return loss

    def train_summary(self) -> dict[str, float]:
        """Sample-weighted mean of the loss and each weighted term over the last epoch, over
        every rank's samples (each rank trained on its shard)."""
        if not self._sums:
            return {}
        names = sorted(self._sums)
        totals = torch.stack([torch.as_tensor(self._sums[k], dtype=torch.float64, device=self.device).reshape(())
                              for k in names] + [torch.tensor(float(self._count), dtype=torch.float64, device=self.device)])
        if self.trainer.world_size > 1:
            totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        values = totals.tolist()
        return {k: v / max(values[-1], 1) for k, v in zip(names, values[:-1])}

    # --- validation
    def on_validation_epoch_start(self) -> None:
        self._collector = OutputCollector()
        self._dev_loss_sum, self._dev_count = 0.0, 0

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        output = self.model(batch["inputs"])
        self._collector.add(output, batch["labels"])
        teacher = self.dev_teacher(batch) if self.dev_teacher is not None else None
        loss = self.objective.dev_loss(output, teacher, LossBatch(batch["labels"], batch["index"], self.progress()))
        n = len(batch["index"])
        self._dev_loss_sum = self._dev_loss_sum + loss.detach().double() * n  # on the device: read once per pass
        self._dev_count += n

    def on_validation_epoch_end(self) -> None:
        """Dev metrics (`eval/metrics.evaluate`) plus the dev loss; every monitorable value is
        logged (`config/monitor.py`), so early stopping can follow whichever one is chosen."""
        self.dev_metrics = self._collector.metrics(self.model.tasks)
        self.dev_metrics["loss"] = float(self._dev_loss_sum) / max(self._dev_count, 1)
        if self.trainer.world_size > 1:
            # every rank evaluated the whole dev split (data/dataset.WholeSplit); rank 0's numbers
            # decide for all, so early stopping and the best epoch cannot disagree by a rounding
            self.dev_metrics = self.trainer.strategy.broadcast(self.dev_metrics, src=0)
        tasks = [t.name for t in self.model.tasks]
        mode = monitor_mode(self.training_cfg.monitor, self.training_cfg.mode)
        value = monitor_value(self.training_cfg.monitor, self.dev_metrics, tasks)
        worst = float("-inf") if mode == "max" else float("inf")  # an undefined value (an AUROC of one class)
        # equal on every rank already (above): sync_dist only says so to Lightning
        self.log(self.training_cfg.monitor, worst if value is None else value, prog_bar=True, sync_dist=True)
        if self.training_cfg.monitor != "dev_score":
            self.log("dev_score", self.dev_metrics["score"], prog_bar=True, sync_dist=True)
        self.log("epoch_index", float(self.current_epoch + 1), sync_dist=True)  # periodic checkpoints keep the latest

    # --- optimisation
    def configure_optimizers(self) -> Any:
        return build_optimizer(self.model, self.objective, self.training_cfg)
