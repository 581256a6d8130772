"""Is a KD-from-cache step dearer than a student-alone step? Interleaved, repeated, same batches.

The speed of this 2-core VM drifts by up to 40% over minutes; kd_overhead.py copes by taking
its ratios within rounds of whole stages, which still leaves a few percent of noise. This
script goes finer, to the step: it runs the identical 6 batches as
plain training steps of the same student, alternating "alone" (task loss) and "cache" (KD
objective, teacher outputs read from the cache), three times, and also times the cache reads
on their own.

    .venv/bin/python benchmarks/kd_step_probe.py        # the demo student; run kd_overhead.py first
    .venv/bin/python benchmarks/kd_step_probe.py --recipe recipes/medpix_cpu.yaml --preset vanilla \\
        --threads 1 --set teacher.checkpoint=runs/medpix_teacher_text/teacher_best.safetensors \\
        --set output_dir=runs/medpix_sweep             # a recipe's own student and teacher, as a sweep worker runs them

Every parameter of the student trains here (no `unfreeze_layers` warm-up): both arms alike.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kd_overhead import make_config
from mmdistill.cache.images import load_run_data
from mmdistill.models.build import build_model
from mmdistill.losses.objective import build_objective
from mmdistill.losses.terms import LossBatch
from mmdistill.preflight import load_config
from mmdistill.train.teachers import teacher_source
from mmdistill.models.checkpoints import load_weights

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--recipe", help="a config whose student and teacher to probe (default: kd_overhead.py's demo setup)")
parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value (repeatable)")
parser.add_argument("--preset", default="kd", help="the KD arm's objective preset")
parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
if args.recipe:
    cfg = load_config(args.recipe, args.set)
else:
    work = Path("runs/bench_kd_overhead")
    cfg = make_config(work / "data", work, 128, "resnet50", 1, checkpoint=work / "teacher_seed0.safetensors")
data = load_run_data(cfg)
student = build_model(cfg, "student", data)
teacher = build_model(cfg, "teacher", data); load_weights(teacher, cfg.teacher.checkpoint, "t")
alone = build_objective("task_only", None, data.tasks, student, None)
kd = build_objective(args.preset, None, data.tasks, student, teacher)
src = teacher_source(cfg, teacher, kd, data)
opt = torch.optim.AdamW(student.parameters(), 1e-3)
batches = list(data.loader("train", 32, shuffle=True, seed=0, modalities=set(student.modalities)))[:6]
def step(b, obj, source):
    out = student(b["inputs"]); t = source(b) if source else None
    loss, _ = obj(out, t, LossBatch(b["labels"], b["index"], 0.0)); opt.zero_grad(); loss.backward(); opt.step()
for rep in range(3):
    for name, obj, source in (("alone", alone, None), ("cache", kd, src)):
        t0 = time.perf_counter()
        for b in batches: step(b, obj, source)
        t1 = time.perf_counter()
        tr = time.perf_counter()
        for b in batches: source(b) if source else None
        print(name, f"{t1-t0:.2f}s for {len(batches)} steps; teacher reads {time.perf_counter()-tr:.4f}s", flush=True)
print("torch threads", torch.get_num_threads())
