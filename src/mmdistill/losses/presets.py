"""Named objectives (presets) and the one function that turns a config's objective into terms.

Presets name the combinations the seed repositories used, so `objective.preset: kl_bce`
reproduces seed 002's baseline exactly (0.7 * KD + 0.3 * BCE, T = 4). A preset takes
overrides of its terms' weights and parameters by term name, so changing seed 002's
`--kd_temperature` or seed 000's `T` is one line, not a rewritten term list:

    objective:
      preset: kl_bce
      overrides: {kd_logits: {params: {temperature: 2.0}}, task: {weight: 0.5}}

A feature reference with `*` (`projection:*`, `embedding:*`) stands for every modality both
models read: the term is repeated once per such modality, its weight shared equally between
the copies. Seed 000's feature losses compared the teacher's per-modality raw embeddings with
the student's per-modality projections (img_raw/txt_raw against img_proj/txt_proj), and that is
what its presets here do (`combined`, `crd`, `rkd`, `mmd`); with no modality in common they
fall back to the fused vectors.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from mmdistill.config.schema import TermSpec
from mmdistill.errors import UserError

_KD = {"term": "kd_logits", "params": {"temperature": 4.0}}
# seed 000: the teacher's raw embedding of a modality against the student's projection of it
_PER_MODALITY = {"student": "projection:*", "teacher": "embedding:*"}
EVERY = "*"

# Feature terms read `fused` (the fused vector of each model) unless a preset says otherwise.
PRESETS: dict[str, list[dict[str, Any]]] = {
    # supervised only: the teacher stage and the baseline student
    "task_only": [{"term": "task", "weight": 1.0}],
    # Hinton KD with alpha = 0.5: 0.5 * task + 0.5 * KD (T = 4)
    "kd": [{"term": "task", "weight": 0.5}, {**_KD, "weight": 0.5}],
    # seed 002 baseline: 0.7 * KL (T = 4) + 0.3 * BCE/CE
    "kl_bce": [{**_KD, "weight": 0.7}, {"term": "task", "weight": 0.3}],
    # seed 002 variant 1: 0.5 * KL + 0.2 * L2 on the fused features + 0.3 * BCE/CE
    "kl_l2_bce": [
        {**_KD, "weight": 0.5},
        {"term": "feat_l2", "weight": 0.2},
        {"term": "task", "weight": 0.3},
    ],
    # seed 002 variant 2: 0.4 * KL + 0.2 * contrastive (pairwise-distance structure) + 0.2 * L2 + 0.2 * BCE/CE
    "kl_contrastive_l2_bce": [
        {**_KD, "weight": 0.4},
        {"term": "contrastive_dist", "weight": 0.2},
        {"term": "feat_l2", "weight": 0.2},
        {"term": "task", "weight": 0.2},
    ],
    # seed 003: feature regression (magnitude) + cosine (direction) + task, all weight 1
    "feat_l2_cos": [{"term": "feat_l2", "weight": 1.0}, {"term": "feat_cos", "weight": 1.0}, {"term": "task", "weight": 1.0}],
    # seed 000 `vanilla`: (1 - alpha) * task + alpha * KD with alpha = 0.5, T = 4
    "vanilla": [{"term": "task", "weight": 0.5}, {**_KD, "weight": 0.5}],
    # seed 000 `combined`: vanilla + 0.25 * L2 + 0.25 * cosine between each modality's teacher
    # embedding and student projection (seed 000 does not publish its beta/gamma; 0.25 each is ours)
    "combined": [
        {"term": "task", "weight": 0.5},
        {**_KD, "weight": 0.5},
        {"term": "feat_l2", "weight": 0.25, "params": _PER_MODALITY},
        {"term": "feat_cos", "weight": 0.25, "params": _PER_MODALITY},
    ],
    # seed 000 `crd`: vanilla + 0.8 * CRD (0.8 is the CRD paper's weight), per modality
    "crd": [{"term": "task", "weight": 0.5}, {**_KD, "weight": 0.5},
            {"term": "crd", "weight": 0.8, "params": _PER_MODALITY}],
    # seed 000 `rkd`: vanilla + RKD (distance 1 + angle 2, the RKD authors' code defaults), per modality
    "rkd": [{"term": "task", "weight": 0.5}, {**_KD, "weight": 0.5},
            {"term": "rkd", "weight": 1.0, "params": _PER_MODALITY}],
    # seed 000 `mmd`: vanilla + MMD^2 between teacher embedding and student projection, per modality
    "mmd": [{"term": "task", "weight": 0.5}, {**_KD, "weight": 0.5},
            {"term": "mmd", "weight": 1.0, "params": _PER_MODALITY}],
}

PRESET_NOTES: dict[str, str] = {
    "task_only": "supervised loss only (teacher stage, baseline student)",
    "kd": "Hinton KD, alpha 0.5, T 4",
    "kl_bce": "seed 002 baseline: 0.7 KL + 0.3 BCE",
    "kl_l2_bce": "seed 002 variant 1: KL + feature L2 (fused) + BCE",
    "kl_contrastive_l2_bce": "seed 002 variant 2: KL + contrastive distances + L2 (fused) + BCE",
    "feat_l2_cos": "seed 003: feature L2 + cosine + task",
    "vanilla": "seed 000 vanilla: task + KD, alpha 0.5",
    "combined": "seed 000 combined: task + KD + L2 + cosine, teacher embedding vs student projection per modality",
    "crd": "seed 000 crd: task + KD + CRD, teacher embedding vs student projection per modality",
    "rkd": "seed 000 rkd: task + KD + RKD, teacher embedding vs student projection per modality",
    "mmd": "seed 000 mmd: task + KD + MMD, teacher embedding vs student projection per modality",
}


def preset_terms(preset: str | None, key: str = "objective") -> list[TermSpec]:
    if preset not in PRESETS:
        raise UserError(f"{key}.preset: unknown preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
    return [TermSpec.model_validate(t) for t in PRESETS[preset]]


def apply_overrides(specs: list[TermSpec], overrides: Mapping[str, Any], preset: str, key: str) -> list[TermSpec]:
    """Each override {term name: {weight, params}} replaces the weight and updates the params
    of the preset's terms of that name."""
    names = [s.term for s in specs]
    for name in overrides:
        if name not in names:
            raise UserError(f"{key}.overrides.{name}: preset {preset!r} has no term {name!r} "
                            f"(its terms: {', '.join(dict.fromkeys(names))})")
    out = []
    for spec in specs:
        change = overrides.get(spec.term)
        if change is None:
            out.append(spec)
            continue
        weight = spec.weight if change.weight is None else change.weight
        out.append(spec.model_copy(update={"weight": weight, "params": {**spec.params, **change.params}}))
    return out


def _expand(spec: TermSpec, shared: list[str]) -> list[TermSpec]:
    """`spec` once per modality in `shared` when a feature reference ends in `:*`."""
    refs = {role: spec.params.get(role) for role in ("student", "teacher")}
    starred = {role for role, ref in refs.items() if isinstance(ref, str) and ref.endswith(f":{EVERY}")}
    if not starred:
        return [spec]
    if not shared:  # nothing in common: both compare their fused vectors
        return [spec.model_copy(update={"params": {**spec.params, **{role: "fused" for role in starred}}})]
    copies = []
    for m in shared:
        params = {**spec.params, **{role: refs[role][:-1] + m for role in starred}}
        name = f"{spec.term}_{m}" if len(shared) > 1 else spec.name
        copies.append(spec.model_copy(update={"params": params, "weight": spec.weight / len(shared), "name": name}))
    return copies


def resolve_terms(preset: str | None, terms: list[TermSpec] | None, overrides: Mapping[str, Any] | None = None,
                  student: Iterable[str] | None = None, teacher: Iterable[str] | None = None,
                  key: str = "objective") -> list[TermSpec]:
    """The terms of an objective for models reading `student` and `teacher` modalities: the
    explicit `terms`, or the preset with its `overrides`, with `*` references expanded."""
    specs = list(terms) if terms else preset_terms(preset, key)
    if overrides:
        specs = apply_overrides(specs, overrides, preset or "", key)
    teacher_reads = set(teacher or ())
    shared = [m for m in (student or ()) if m in teacher_reads]
    return [copy for spec in specs for copy in _expand(spec, shared)]
