"""From a config with a `sweep` block to the list of jobs, with everything checked first.

Every variant config is validated (schema + cross-section checks) and its data and models
are built once per distinct combination before anything runs, so a bad grid value exits 2
naming the key and value. Then, per seed, one teacher job per distinct teacher configuration
(`config/hashing.teacher_key`): it trains the teacher alone in `_teachers/<key>/seed_<n>/`, and every
run that needs that teacher loads its `checkpoints/teacher_best.safetensors` through
`teacher.checkpoint` instead of training its own.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from pydantic import ValidationError

from mmdistill.config.hashing import _digest, config_hash, teacher_hash, teacher_key
from mmdistill.config.loading import apply_overrides, format_validation_error, read_config_file
from mmdistill.config.schema import ExperimentConfig, SweepSpec
from mmdistill.errors import UserError
from mmdistill.preflight import checked_config
from mmdistill.sweep.grid import Variant, apply_variant, expand_grid, format_value
from mmdistill.sweep.jobs import Job

TEACHERS_DIR = "_teachers"
TEACHER_FILE = Path("checkpoints") / "teacher_best.safetensors"


@dataclass
class SweepPlan:
    source: str
    experiment: str
    sweep_dir: Path
    spec: SweepSpec
    base: dict[str, Any]                 # the raw config after --set, without `sweep`
    variants: list[Variant]
    teachers: list[Job] = field(default_factory=list)
    runs: list[Job] = field(default_factory=list)
    tune: dict[str, str] = field(default_factory=dict)  # sweep.tune with its defaults resolved

    def manifest(self) -> dict[str, Any]:
        """sweep.json: what `mmdistill report` needs to aggregate this sweep again later."""
        return {
            "experiment": self.experiment,
            "config": self.source,
            "seeds": list(self.spec.seeds),
            "grid": self.spec.grid,
            "tune": self.tune,
            "tsne": self.spec.tsne,
            "base": self.base,
            "variants": [{"name": v.name, "overrides": v.overrides} for v in self.variants],
            "teachers": [{"dir": t.run_dir, "seed": t.seed, "config_hash": t.expected_hash, "runs": t.dependents}
                         for t in self.teachers],
            "runs": [{"variant": r.variant, "seed": r.seed, "dir": r.run_dir, "config_hash": r.expected_hash,
                      "teacher_dir": r.teacher_dir} for r in self.runs],
        }


def _blame(variant: Variant, source: str, exc: UserError) -> UserError:
    """Prefix an error in a variant config with the grid key(s) and value(s) that made it."""
    message = str(exc).removeprefix(f"{source}: ")
    culprits = {k: v for k, v in variant.overrides.items() if k in message} or variant.overrides
    values = ", ".join(f"{k}={format_value(v)}" for k, v in culprits.items())
    return UserError(f"{source}: sweep.grid {values} (variant {variant.name}): {message}")


def _data_key(config: ExperimentConfig) -> str:
    """Configs with equal keys read the same records (the data section, the tasks, and the
    modalities some model reads)."""
    dump = config.model_dump(mode="json")
    return _digest({"data": dump["data"], "tasks": dump["tasks"],
                    "used": sorted(set(dump["teacher"]["encoders"]) | set(dump["student"]["encoders"]))})


def _check_runtime(configs: list[tuple[Variant, ExperimentConfig]], source: str) -> dict[str, str]:
    """Read the data once per distinct data section and build the models once per distinct
    model combination, as `mmdistill validate` does: unknown backbones, unreadable weights or
    missing columns fail here, not after hours of other runs. Returns each data section's
    signature ({`_data_key`: `data_signature`}), what a finished run must have read."""
    from mmdistill.cache.images import load_checked_data
    from mmdistill.cache.keys import data_signature
    from mmdistill.preflight import check_models

    data_cache: dict[str, Any] = {}
    signatures: dict[str, str] = {}
    seen: set[str] = set()
    for variant, config in configs:
        dump = config.model_dump(mode="json")
        data_key = _data_key(config)
        models_key = _digest({k: dump[k] for k in ("teacher", "student", "objective")} | {"data": data_key})
        if models_key in seen:
            continue
        seen.add(models_key)
        try:
            if data_key not in data_cache:
                data_cache[data_key] = load_checked_data(config)
            check_models(config, data_cache[data_key])
            if data_key not in signatures:
                signatures[data_key] = data_signature(config, data_cache[data_key])
        except UserError as exc:
            raise (_blame(variant, source, exc) if variant.overrides else exc) from None
    return signatures


def processes_per_node(config: ExperimentConfig) -> int | None:
    """How many processes one run of `config` needs on each node (None: `auto` or -1, which
    only the machine it lands on can say)."""
    devices = config.training.devices
    if isinstance(devices, int):
        return None if devices < 0 else devices
    text = devices.strip().strip(",")
    return None if text in ("auto", "-1") else len([p for p in text.split(",") if p.strip()])


def _check_processes(spec: SweepSpec, configs: list[tuple[Variant, ExperimentConfig]], source: str) -> None:
    """A run on many devices is many processes started together. The local executor runs a job
    inside one worker process, where Lightning would start the others by re-running the
    command (the whole sweep), so such runs go through SLURM, whose srun starts one process per
    device for each job (`sweep.executor.tasks_per_node`, `nodes`)."""
    executor = spec.executor
    for variant, config in configs:
        per_node, nodes = processes_per_node(config), config.training.num_nodes
        if per_node == 1 and nodes == 1:
            continue
        where = f"{source}: variant {variant.name}: " if variant.overrides else f"{source}: "
        shown = f"training.devices={config.training.devices}, training.num_nodes={nodes}"
        if executor.type != "slurm" or executor.cluster != "slurm":
            raise UserError(f"{where}{shown} needs several processes per run, which the sweep starts through SLURM: "
                            "set sweep.executor.type: slurm with tasks_per_node and nodes to match (or run it "
                            "alone with `mmdistill run`)")
        if per_node is None or (per_node, nodes) != (executor.tasks_per_node, executor.nodes):
            raise UserError(f"{where}{shown} must match sweep.executor.tasks_per_node={executor.tasks_per_node} and "
                            f"sweep.executor.nodes={executor.nodes} (one process per device; devices as a number)")


def load_sweep(path: str | Path, overrides: Iterable[str] = ()) -> tuple[dict[str, Any], SweepSpec]:
    raw = apply_overrides(read_config_file(path), overrides)
    sweep_raw = raw.pop("sweep", None) or {}
    try:
        spec = SweepSpec.model_validate(sweep_raw)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, sweep_raw, str(path)).replace(
            f"{path}: ", f"{path}: sweep.", 1)) from None
    return raw, spec


def make_plan(path: str | Path, overrides: Iterable[str] = (), check_runtime: bool = True,
              quiet: Callable[[SweepSpec], bool] | None = None) -> SweepPlan:
    """Expand and validate every variant, then lay out the teacher jobs and the runs.
    `quiet(spec)` says whether runs should hide their progress bars (parallel executors)."""
    source = str(path)
    base, spec = load_sweep(path, overrides)
    try:
        hide_bars = bool(quiet and quiet(spec))
    except UserError as exc:  # an unknown executor type
        raise UserError(f"{source}: {exc}") from None
    variants = expand_grid(spec.grid)
    configs: list[tuple[Variant, ExperimentConfig]] = []
    for variant in variants:
        try:
            configs.append((variant, checked_config(apply_variant(base, variant), source)))
        except UserError as exc:
            raise (_blame(variant, source, exc) if variant.overrides else exc) from None
    _check_processes(spec, configs, source)
    signatures = _check_runtime(configs, source) if check_runtime else {}

    first = configs[0][1]
    sweep_dir = first.output_dir / first.experiment_name
    plan = SweepPlan(source, first.experiment_name, sweep_dir, spec, base, variants,
                     tune=spec.tune.resolved(first.training.student, list(first.tasks)))
    teachers: dict[tuple[str, int], Job] = {}
    for seed in spec.seeds:
        for variant, config in configs:
            tree = copy.deepcopy(config.model_dump(mode="json"))
            tree["seed"] = seed
            if hide_bars:
                tree["logging"]["progress_bar"] = False
            # what trackers file the run under (logging is outside every hash: tags change no identity)
            tags = {**tree["logging"]["tags"], "sweep": plan.experiment, "seed": str(seed)}
            tree["logging"]["tags"] = {**tags, "variant": variant.name}
            run_dir = sweep_dir / variant.name / f"seed_{seed}"
            data_signature = signatures.get(_data_key(config))
            teacher_dir = None
            if spec.share_teacher and config.teacher.checkpoint is None:
                seeded = ExperimentConfig.model_validate(tree)
                key = (teacher_key(seeded), seed)
                if key not in teachers:
                    tdir = sweep_dir / TEACHERS_DIR / key[0] / f"seed_{seed}"
                    teacher_tree = copy.deepcopy(tree)
                    teacher_tree["logging"]["tags"] = {**tags, "variant": "shared teacher"}
                    teachers[key] = Job("teacher", f"teacher {key[0][:8]} seed {seed}", str(tdir), teacher_tree,
                                        teacher_hash(seeded), seed=seed, expected_data=data_signature)
                teacher_dir = teachers[key].run_dir
                teachers[key].dependents.append(str(run_dir))
                tree["teacher"]["checkpoint"] = str(Path(teacher_dir) / TEACHER_FILE)
            resolved = ExperimentConfig.model_validate(tree)
            plan.runs.append(Job("run", f"{variant.name} seed {seed}", str(run_dir), resolved.model_dump(mode="json"),
                                 config_hash(resolved), variant=variant.name, seed=seed, teacher_dir=teacher_dir,
                                 expected_data=data_signature))
    plan.teachers = list(teachers.values())
    return plan


def best_config(base: dict[str, Any], variant: Variant, experiment: str) -> dict[str, Any]:
    """The winning variant as a config `mmdistill run` takes: the base config (as written,
    after --set) with the variant's values, its own experiment name, no sweep block."""
    tree = apply_variant(base, variant)
    tree.pop("sweep", None)
    tree["experiment_name"] = f"{experiment}_best"
    ExperimentConfig.model_validate(tree)
    return tree
