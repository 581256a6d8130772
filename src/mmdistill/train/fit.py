"""Fitting one model: a Lightning Trainer with early stopping on the dev score, the best weights
restored at the end, and the model evaluated on dev and test. Every stage of a run that trains
(teacher, KD student, baseline, a pruned student's fine-tune) goes through `train_stage`."""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.plugins.environments import SLURMEnvironment

from mmdistill.config.monitor import monitor_mode
from mmdistill.config.schema import ExperimentConfig, StageTraining
from mmdistill.data.dataset import DataBundle
from mmdistill.distributed import autocast, barrier, compute_device
from mmdistill.losses.objective import Objective
from mmdistill.models.checkpoints import load_start_weights, load_weights
from mmdistill.models.net import MultiModalNet
from mmdistill.train.module import OutputCollector, StageModule
from mmdistill.train.recorder import EpochRecorder, MetricsLog
from mmdistill.train.resume import LastCheckpoint, ResumeState, checkpoint_epoch
from mmdistill.train.teachers import CachedTeacher, FrozenTeacher, dev_teacher_source, teacher_source
from mmdistill.train.warmup import BackboneWarmup

logger = logging.getLogger(__name__)


@dataclass
class StageResult:
    dev: dict[str, Any]
    test: dict[str, Any]
    best_epoch: int | None
    seconds: float
    reused_from: str | None = None  # the cache entry it was read from, when it was not computed in this run


def _quiet_lightning() -> None:
    """Lightning announces devices and tips on every Trainer; a run makes three of them."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                 "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")


def on_cpu(config: ExperimentConfig) -> bool:
    """Whether Lightning will train on the CPU (`auto` without a visible GPU)."""
    return config.training.accelerator == "cpu" or (config.training.accelerator == "auto" and not torch.cuda.is_available())


def make_trainer(config: ExperimentConfig, stage: StageTraining, callbacks: list[L.Callback]) -> L.Trainer:
    _quiet_lightning()
    cpu = on_cpu(config)
    extra: dict[str, Any] = {"limit_train_batches": stage.limit_train_batches} if stage.limit_train_batches else {}
    if SLURMEnvironment.detect():
        # ranks from SLURM (srun starts one process per device); requeueing and resuming are ours
        # (a run resumes from its stage records and last checkpoint), not Lightning's hpc_ckpt files,
        # which it would load into whichever stage trains first after the restart
        extra["plugins"] = [SLURMEnvironment(auto_requeue=False)]
    return L.Trainer(
        max_epochs=stage.epochs,
        accelerator=config.training.accelerator,
        devices=config.training.devices,
        num_nodes=config.training.num_nodes,
        strategy=config.training.strategy,
        sync_batchnorm=config.training.sync_batchnorm,
        precision=config.training.precision,
        deterministic=config.training.deterministic if cpu else False,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=bool(stage.save_every),
        enable_model_summary=False,
        enable_progress_bar=config.logging.progress_bar,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # the train loader shards itself (data/shard.py); dev is whole per rank
        check_val_every_n_epoch=stage.validation_interval,
        log_every_n_steps=config.logging.log_every_n_steps,
        gradient_clip_val=stage.grad_clip,
        **extra,
    )


@torch.no_grad()
def evaluate_model(model: MultiModalNet, data: DataBundle, split: str, batch_size: int,
                   config: ExperimentConfig | None = None) -> dict[str, Any]:
    """Metrics of `model` on the whole split, on this process's device under the stage's
    precision (`distributed.py`; the CPU in fp32 without a config). Every rank computes the
    same numbers; nothing here is sharded."""
    device = compute_device(config) if config is not None else torch.device("cpu")
    model.eval().to(device)
    collector = OutputCollector()
    try:
        with autocast(config, device):
            for batch in data.loader(split, batch_size, shuffle=False, seed=0, modalities=set(model.modalities)):
                inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch["inputs"].items()}
                collector.add(model(inputs), batch["labels"])
    finally:
        model.cpu()
    return collector.metrics(model.tasks)


def train_stage(name: str, config: ExperimentConfig, stage: StageTraining, model: MultiModalNet, objective: Objective,
                data: DataBundle, log: MetricsLog, best_path: Path, teacher: MultiModalNet | nn.Module | None = None,
                views: int | None = None, last_path: Path | None = None) -> StageResult:
    """Fit `model` with early stopping on dev, reload its best weights, evaluate dev and test.

    The best epoch and early stopping follow `stage.monitor` (`config/monitor.py`); with
    `stage.load_from` the model starts from those weights (a new optimizer and schedule, unlike
    `resume_from`, which continues a stopped stage where it was).

    With a `teacher` and an objective that reads it, the teacher's outputs come from the cache
    (built first if needed) or, with `cache.teacher: false`, from running it every step.
    `views`: the train split's augmented views per sample the stage cycles through, None for a
    fresh one every epoch (`data/views.py`). `last_path`: where the stage keeps its last
    checkpoint (`train/resume.py`); when one is there, the stage continues from it, not from
    `resume_from` (where an earlier attempt of this run started, so a requeued job never
    starts over from there).
    """
    start = time.perf_counter()
    if isinstance(teacher, MultiModalNet):
        source = teacher_source(config, teacher, objective, data)
    else:  # already a teacher-output source (precomputed embeddings), or None
        source = teacher if objective.needs_teacher else None
    reads = set(model.modalities) | (set(teacher.modalities) if isinstance(source, FrozenTeacher) else set())
    if stage.load_from is not None:
        load_start_weights(model, stage.load_from, f"training.{name}.load_from")
    mode = monitor_mode(stage.monitor, stage.mode)
    if config.training.channels_last:
        model.to(memory_format=torch.channels_last)
    module = StageModule(name, model, objective, stage, source, dev_teacher_source(config, teacher, objective, data),
                         channels_last=config.training.channels_last)
    recorder = EpochRecorder(name, log, best_path, stage.monitor, mode)
    callbacks: list[L.Callback] = [recorder]
    if stage.freeze_backbone_epochs or stage.unfreeze_layers:
        callbacks.append(BackboneWarmup(stage.freeze_backbone_epochs, stage.unfreeze_layers))
    if stage.patience:
        callbacks.append(EarlyStopping(monitor=stage.monitor, mode=mode, patience=stage.patience,
                                       check_on_train_epoch_end=False, check_finite=False))
    if stage.save_every:
        callbacks.append(ModelCheckpoint(dirpath=best_path.parent / f"{name}_epochs", filename="epoch{epoch_index:03.0f}",
                                         auto_insert_metric_name=False, monitor="epoch_index", mode="max",
                                         save_top_k=stage.keep_last, every_n_epochs=stage.save_every))
    workers = config.data.num_workers
    train_loader = data.loader("train", stage.batch_size, shuffle=True, seed=config.seed, num_workers=workers,
                               balance_task=stage.weighted_sampling, views=views,
                               modalities=reads, collate=source.collate() if isinstance(source, CachedTeacher) else None)
    ckpt_path = stage.resume_from
    log.drop_stage(name)  # a previous attempt's rows; a checkpoint resumed from brings its own back
    if last_path is not None:
        budget = config.training.last_checkpoint_budget
        callbacks += [LastCheckpoint(last_path, budget)] if budget > 0 else []
        callbacks.append(ResumeState(train_loader))
        done = checkpoint_epoch(last_path) if last_path.is_file() else None
        if done is not None:  # newer than any `resume_from`: this run wrote it after starting from there
            ckpt_path = last_path
            logger.warning("resuming the %s stage after epoch %d, from %s", name, done, last_path)
    elif ckpt_path is not None:
        callbacks.append(ResumeState(train_loader))
    trainer = make_trainer(config, stage, callbacks)
    trainer.fit(module, train_loader,
                data.loader("dev", stage.batch_size, shuffle=False, seed=config.seed, num_workers=workers,
                            modalities=set(model.modalities)),
                ckpt_path=ckpt_path, weights_only=True)
    model.cpu()
    barrier()  # rank 0 wrote the best checkpoint; every rank reads it
    load_weights(model, best_path, f"{name} best checkpoint")
    dev = evaluate_model(model, data, "dev", stage.batch_size, config)
    dev["loss"] = recorder.best_dev["loss"]  # the dev loss needs the training objective: the best epoch's
    test = evaluate_model(model, data, "test", stage.batch_size, config)
    return StageResult(dev=dev, test=test, best_epoch=recorder.best_epoch, seconds=time.perf_counter() - start)


def evaluate_only(model: MultiModalNet, data: DataBundle, batch_size: int,
                  config: ExperimentConfig | None = None) -> StageResult:
    start = time.perf_counter()
    dev = evaluate_model(model, data, "dev", batch_size, config)
    test = evaluate_model(model, data, "test", batch_size, config)
    return StageResult(dev=dev, test=test, best_epoch=None, seconds=time.perf_counter() - start)
