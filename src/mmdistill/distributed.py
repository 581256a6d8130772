"""What each process of a run on many devices does, decided in one place.

Lightning's DDP runs N copies of the same command (it starts them itself, or `srun` does under
SLURM); every copy goes through the same stages in the same order, so the collective steps
inside training line up. Around training they differ only in what this module says:

- `is_writer`: only global rank 0 writes run files (metrics.csv, checkpoints, records,
  results.json, plots, trackers); a cache entry is built by whichever process takes its lock
  first while the others wait and read it (`cache/store.py`);
- `compute_device` / `autocast`: work outside Lightning's loop (final evaluation, teacher-output
  caches, probes, plot features, `extract`) runs on this process's own device, under the
  stage's precision, as training did;
- `barrier` / `broadcast`: the few places where ranks must wait for rank 0's file or agree on
  rank 0's decision (a no-op in a single process);
- `solo`: rank 0 alone doing work after training (compression), with collectives switched off.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from typing import Any, ContextManager, Iterator

import torch

MIXED = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}
_solo = False  # set by `solo()`: this process works alone although a process group exists


def global_rank() -> int:
    """This process's rank: the process group's once it is set up, before that as Lightning
    reads it from the environment (RANK / LOCAL_RANK / SLURM_PROCID) when the process starts."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def is_writer() -> bool:
    """Whether this process writes the run's files: global rank 0 (the only one on one device)."""
    return global_rank() == 0


def local_rank() -> int:
    """This process's index among those on its node (its GPU)."""
    for name in ("LOCAL_RANK", "SLURM_LOCALID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def initialized() -> bool:
    """A process group exists and this process works with it (not inside `solo()`)."""
    return not _solo and torch.distributed.is_available() and torch.distributed.is_initialized()


@contextmanager
def solo() -> Iterator[None]:
    """Rank 0 working alone after the ranks trained together (compressing the student): world
    size 1, no barriers, no gathers, although the process group still exists."""
    global _solo
    before, _solo = _solo, True
    try:
        yield
    finally:
        _solo = before


def world_size() -> int:
    return torch.distributed.get_world_size() if initialized() else 1


def barrier() -> None:
    if initialized():
        torch.distributed.barrier()


def broadcast(value: Any) -> Any:
    """Rank 0's `value` on every rank (any picklable object)."""
    if not initialized():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def uses_gpu(config: Any) -> bool:
    return config.training.accelerator != "cpu" and torch.cuda.is_available()


def device_ids(config: Any) -> list[int] | None:
    """The GPU ids `training.devices` lists ('2,3' -> [2, 3]); None for a count or auto."""
    devices = config.training.devices
    if isinstance(devices, str) and devices.strip() not in ("auto", "-1"):
        return [int(p) for p in devices.split(",") if p.strip()]
    return None


def compute_device(config: Any) -> torch.device:
    """Where this process runs a model outside the training loop: its own GPU when training
    uses GPUs (local rank r on the r-th of `training.devices`' ids, or cuda:r; not every rank
    on cuda:0), else the CPU."""
    if not uses_gpu(config):
        return torch.device("cpu")
    ids = device_ids(config)
    index = ids[local_rank() % len(ids)] if ids else local_rank()
    return torch.device("cuda", index % max(torch.cuda.device_count(), 1))


def check_launch(config: Any) -> None:
    """Several nodes need something that numbers the processes across them (srun, or torchrun's
    RANK and WORLD_SIZE): without it each node's first process would take itself for rank 0
    and write the run directory."""
    from mmdistill.errors import UserError

    if config.training.num_nodes > 1 and not (os.environ.get("SLURM_PROCID") or os.environ.get("RANK")):
        raise UserError(f"training.num_nodes={config.training.num_nodes}: start the run with srun inside an sbatch "
                        "job (or torchrun, which sets RANK and WORLD_SIZE); see docs/distributed.md")
    if config.training.accelerator != "cpu" and not torch.cuda.is_available():
        _check_as_cpu(config.training)


def _check_as_cpu(training: Any) -> None:
    """`validate` may run on a GPU-less login node, so it checks only what holds everywhere; a
    run that starts where no GPU is visible runs on the CPU, and must pass the CPU's rules
    before the run directory exists (Lightning would refuse it after)."""
    from pydantic import ValidationError

    from mmdistill.errors import UserError

    if training.accelerator == "gpu":
        raise UserError("training.accelerator=gpu: no GPU is visible here (torch.cuda.is_available() is False); "
                        "use auto or cpu")
    try:
        type(training).model_validate({**training.model_dump(), "accelerator": "cpu"})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UserError(f"training.accelerator={training.accelerator} runs on the CPU here (no GPU is visible), "
                        f"where training: {first['msg'].removeprefix('Value error, ')}") from None


def autocast(config: Any, device: torch.device) -> ContextManager:
    """The stage's mixed precision around inference, so a cached teacher output equals what the
    live teacher computes inside a mixed-precision training step (none without a config)."""
    dtype = MIXED.get(config.training.precision) if config is not None else None
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor` concatenated along dim 0, in rank order (ranks may hold different
    numbers of rows: the last batch of an epoch). Not differentiable: for state updates such
    as CRD's memory banks, which must stay identical on every rank."""
    if world_size() == 1:
        return tensor
    sizes = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(world_size())]
    torch.distributed.all_gather(sizes, torch.tensor([tensor.shape[0]], device=tensor.device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in sizes]
    torch.distributed.all_gather(parts, padded.contiguous())
    return torch.cat([part[: int(size.item())] for part, size in zip(parts, sizes)])


def one_device(config: Any) -> Any:
    """`config` trained on one device of one node (what compressing a student uses: small
    models, latencies of one process, a fine-tune not worth a process group)."""
    training = config.training.model_copy(update={"devices": 1, "num_nodes": 1, "strategy": "auto"})
    return config.model_copy(update={"training": training})


def may_run_on_several(config: Any) -> bool:
    """Whether a run of `config` may be several processes (several devices or nodes; `auto`
    and -1 may be)."""
    devices = config.training.devices
    several = devices in ("auto", "-1", -1) or (isinstance(devices, int) and devices > 1) or (
        isinstance(devices, str) and len(device_ids(config) or []) > 1)
    return several or config.training.num_nodes > 1


def session() -> str:
    """What the processes of one launch of a run share, so rank r > 0 can tell rank 0's
    preparation of the run directory for this launch from an older one: SLURM's job id and
    restart count, torchrun's run id, or an id rank 0 sets before Lightning starts the others
    (they inherit its environment)."""
    if os.environ.get("SLURM_JOB_ID") and os.environ.get("SLURM_PROCID"):
        return f"slurm-{os.environ['SLURM_JOB_ID']}-{os.environ.get('SLURM_RESTART_COUNT', '0')}"
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        return f"torchrun-{os.environ['TORCHELASTIC_RUN_ID']}"
    if not os.environ.get("MMDISTILL_SESSION"):
        import uuid

        os.environ["MMDISTILL_SESSION"] = uuid.uuid4().hex
    return os.environ["MMDISTILL_SESSION"]
