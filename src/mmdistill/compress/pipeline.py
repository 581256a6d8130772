"""`compress_run`: every compression of one run's student, each scored on test and timed.

Order of work: every input file is read and checked first (a missing or damaged checkpoint
stops here, exit 2, before anything is written); each model file is written atomically into
`<run_dir>/compressed/` as it is made; results.json (its `compressed` entry, the rest kept) and
compress.md are written last, atomically. Models:

    fp32                   the trained student as it is (PyTorch)
    pruned_unstructured    global L1 magnitude pruning to `sparsity`, fine-tuned, masks made permanent
    pruned_structured      `channel_sparsity` of each conv's channels removed, fine-tuned
    int8_dynamic           PyTorch dynamic int8 (Linear layers)
    int8_static_fx         PyTorch static int8, FX graph mode, calibrated on train samples
    onnx_fp32              ONNX export run by onnxruntime
    onnx_int8_qdq / onnx_int8_qoperator   onnxruntime static int8, both graph forms
    pruned_structured_int8 the channel-pruned student through the default int8 path

The default int8 path is chosen by measurement: the fastest at batch 1 among those within one
point (0.01) of the fp32 test score.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from mmdistill.compress import (artifacts, onnx_export, profile, prune_channels, prune_unstructured, quantize,
                                report)
from mmdistill.compress.finetune import finetune
from mmdistill.compress.measure import (Predictor, agreement, count_params, file_bytes, net_predictor, predict_split,
                                        score, speed, torch_predictor)
from mmdistill.compress.runfiles import LoadedRun, load_run
from mmdistill.compress.tensor_model import (non_tensor_modalities, plain_batches, tensor_student,
                                             tensors_of)
from mmdistill.config.schema import ExperimentConfig
from mmdistill.data.dataset import DataBundle
from mmdistill.io import write_json_atomic, write_text_atomic
from mmdistill.models.card import card_for
from mmdistill.models.net import MultiModalNet
from mmdistill.train.recorder import MetricsLog

INT8_PATHS = ("int8_dynamic", "int8_static_fx", "onnx_int8_qdq", "onnx_int8_qoperator")
MAX_SCORE_DROP = 0.01
TIE = 0.05
# QDQ first: the form onnxruntime recommends, that other execution providers also read, and
# whose graph keeps the float model visible; then the other forms, fastest kernels first.
PREFERENCE = ("onnx_int8_qdq", "onnx_int8_qoperator", "int8_static_fx", "int8_dynamic")


class Compressor:
    """Builds, scores and keeps the predictor of each compressed model of one run."""

    def __init__(self, run: LoadedRun, echo: Callable[[str], None]):
        self.run, self.echo = run, echo
        self.spec, self.config, self.data = run.spec, run.config, run.data
        self.tasks = run.data.tasks
        self.names = list(run.student.modalities)
        self.out = run.files.out_dir
        self.text = non_tensor_modalities(run.config)
        self.entries: dict[str, dict[str, Any]] = {}
        self.predictors: dict[str, Predictor] = {}
        self.reference: torch.Tensor | None = None
        self.notes: list[str] = []
        self.structured: MultiModalNet | None = None
        self._calibration: list[tuple[torch.Tensor, ...]] | None = None
        self._log: MetricsLog | None = None
        # every ONNX file carries the card: how to prepare its inputs, what its outputs mean
        self.card = card_for(run.config, "student", run.results, run.data).to_json()

    # ------------------------------------------------------------------ helpers
    def _rel(self, path: Path) -> str:
        return str(path.relative_to(self.run.files.run_dir))

    def _predictor(self, model: MultiModalNet) -> Predictor:
        if self.text:
            return net_predictor(model, self.tasks)
        return torch_predictor(tensor_student(model), self.names)

    def _runtime(self) -> str:
        return "torch (MultiModalNet)" if self.text else "torch"

    def calibration(self) -> list[tuple[torch.Tensor, ...]]:
        """`calibration_samples` train samples drawn at random (seeded), not the file's first rows,
        which a file sorted by class or by source would make unrepresentative."""
        if self._calibration is None:
            self._calibration = [tensors_of(b["inputs"], self.names)
                                 for b in plain_batches(self.data, "train", 32, self.spec.calibration_samples,
                                                        sample_seed=self.config.seed)]
        return self._calibration

    def example(self) -> tuple[torch.Tensor, ...]:
        return tuple(t[:1] for t in self.calibration()[0])

    def finetune_log(self) -> MetricsLog:
        if self._log is None:
            self._log = MetricsLog(self.out / "finetune_metrics.csv")
        return self._log

    def add(self, name: str, predict: Predictor, file: Path, fmt: str, source: str, runtime: str,
            model: MultiModalNet, **extra: Any) -> torch.Tensor:
        """Score `name` on dev and test and record its entry (timing comes later, for all at once)."""
        flat, labels = predict_split(predict, self.data)
        metrics = score(self.tasks, flat, labels)
        dev = score(self.tasks, *predict_split(predict, self.data, "dev"))
        params, nonzero = count_params(model)
        entry: dict[str, Any] = {
            "score": metrics["score"], "dev_score": dev["score"], "params": params, "nonzero_params": nonzero,
            "file_bytes": file_bytes(file),
            "latency_ms_batch1": None, "throughput_batch32": None,
            "tasks": {t: m["f1"] for t, m in metrics["tasks"].items()},
            "runtime": runtime, "threads": self.spec.threads, "file": self._rel(file), "format": fmt, "source": source,
        }
        if self.reference is None:
            self.reference = flat
        else:
            entry["agreement"] = agreement(self.tasks, flat, self.reference)
        entry.update(extra)
        self.entries[name], self.predictors[name] = entry, predict
        self.echo(f"  {name:<24} test score {entry['score']:.4f}")
        return flat

    # ------------------------------------------------------------------ models
    def fp32(self) -> None:
        self.add("fp32", self._predictor(self.run.student), self.run.files.student, "safetensors", "fp32",
                 self._runtime(), self.run.student)

    def _finetune(self, name: str, model: MultiModalNet) -> dict[str, Any] | None:
        result = finetune(name, self.config, self.spec, model, self.run.teacher, self.data, self.finetune_log(), self.out)
        if result is None:
            return None
        lr = self.spec.finetune_lr or self.config.training.student.lr / 2
        return {"epochs": self.spec.finetune_epochs, "lr": lr, "best_epoch": result.best_epoch,
                "dev_score": result.dev["score"]}

    def pruned_unstructured(self) -> None:
        model = copy.deepcopy(self.run.student)
        params = prune_unstructured.apply(model, self.spec.sparsity)
        tuned = self._finetune("pruned_unstructured", model)
        prune_unstructured.make_permanent(params)
        model.eval()
        path = self.out / artifacts.FILES["pruned_unstructured"]
        artifacts.save_student(model, path)
        self.add("pruned_unstructured", self._predictor(model), path, "safetensors", "fp32", self._runtime(), model,
                 target_sparsity=self.spec.sparsity, sparsity=round(prune_unstructured.sparsity(params), 6),
                 finetune=tuned)

    def pruned_structured(self) -> None:
        model = copy.deepcopy(self.run.student)
        try:
            plan, notes = prune_channels.prune_channels(model, self.spec.channel_sparsity)
        except prune_channels.CannotShrink as exc:
            self.notes.append(f"pruned_structured: skipped, this student cannot be shrunk: {exc}")
            return
        self.notes += [f"pruned_structured: {n}" for n in notes]
        tuned = self._finetune("pruned_structured", model)
        model.eval()
        path = self.out / artifacts.FILES["pruned_structured"]
        artifacts.save_student(model, path, plan)
        before = prune_channels.conv_widths(self.run.student)
        after = prune_channels.conv_widths(model)
        self.add("pruned_structured", self._predictor(model), path, "safetensors", "fp32", self._runtime(), model,
                 channel_sparsity=self.spec.channel_sparsity, channels_before=before, channels=after, finetune=tuned)
        for modality in after:
            self.notes.append(f"pruned_structured: encoders.{modality} conv channels {before[modality]} -> "
                              f"{after[modality]}")
        self.structured = model

    def int8(self, name: str, kind: str, model: MultiModalNet, source: str, fp32_onnx: Path | None = None) -> None:
        """The int8 model of `model` by path `kind` (one of INT8_PATHS)."""
        wrap = tensor_student(model)
        suffix = ".onnx" if kind.startswith("onnx") else ".pt"
        path = self.out / (artifacts.FILES[kind] if source == "fp32" else f"student_{name}{suffix}")
        try:
            if kind == "int8_dynamic":
                quantized = quantize.dynamic(wrap)
            elif kind == "int8_static_fx":
                quantized = quantize.static_fx(wrap, self.calibration())
            else:
                self._onnx_int8(wrap, kind, path, fp32_onnx)
                predict = onnx_export.predictor(onnx_export.session(path, self.spec.threads), self.names)
                self.add(name, predict, path, "onnx", source, "onnxruntime", model, int8_path=kind)
                return
        except Exception as exc:  # an op a quantizer cannot take: say which, keep the rest
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self.notes.append(f"{name}: skipped, {kind} failed on this student ({type(exc).__name__}: {first})")
            return
        quantize.save(quantized, path)
        self.add(name, torch_predictor(quantized, self.names), path, artifacts.FORMATS[kind], source, "torch", model,
                 int8_path=kind)

    def _onnx_int8(self, wrap, kind: str, path: Path, fp32_onnx: Path | None) -> None:
        calibration = onnx_export.numpy_batches(self.calibration(), self.names)
        fmt = kind.removeprefix("onnx_int8_")
        if fp32_onnx is not None:
            onnx_export.quantize_int8(fp32_onnx, path, calibration, fmt, self.card)
            return
        with tempfile.TemporaryDirectory() as work:
            fp32 = Path(work) / "fp32.onnx"
            onnx_export.export(wrap, self.example(), fp32)
            onnx_export.quantize_int8(fp32, path, calibration, fmt, self.card)

    def onnx(self) -> None:
        wrap = tensor_student(self.run.student)
        path = self.out / artifacts.FILES["onnx_fp32"]
        onnx_export.export(wrap, self.example(), path, self.card)
        predict = onnx_export.predictor(onnx_export.session(path, self.spec.threads), self.names)
        flat = self.add("onnx_fp32", predict, path, "onnx", "fp32", "onnxruntime", self.run.student)
        self.entries["onnx_fp32"]["max_abs_diff"] = float((flat - self.reference).abs().max())
        for kind in ("onnx_int8_qdq", "onnx_int8_qoperator"):
            self.int8(kind, kind, self.run.student, "fp32", fp32_onnx=path)

    def profile_onnx(self, default: str | None) -> None:
        """Per-operator time of the fp32 and the int8 ONNX model at batch 1 (onnxruntime's
        profiler): what int8 speeds up, and what it does not."""
        int8 = default if default and default.startswith("onnx_int8") else "onnx_int8_qdq"
        if "onnx_fp32" not in self.entries or int8 not in self.entries:
            return
        sample = next(iter(plain_batches(self.data, "test", 1)))
        feed = {n: t.numpy() for n, t in zip(self.names, tensors_of(sample["inputs"], self.names))}
        times = {}
        for name in ("onnx_fp32", int8):
            times[name] = profile.op_times(self.run.files.run_dir / self.entries[name]["file"], feed, self.spec.threads)
            self.entries[name]["profile_batch1_us"] = times[name]
        note = (f"onnxruntime profile at batch 1, {self.spec.threads} thread(s), median per node: onnx_fp32 "
                f"{profile.describe(times['onnx_fp32'])}; {int8} {profile.describe(times[int8])}")
        conv, qconv = times["onnx_fp32"].get("Conv", 0.0), times[int8].get("QLinearConv", 0.0)
        if conv and qconv:
            glue = sum(t for op, t in times[int8].items() if op in ("QuantizeLinear", "DequantizeLinear", "Transpose"))
            note += (f". Convolutions: {conv:.0f} -> {qconv:.0f} µs ({conv / qconv:.2f}x faster in int8), "
                     f"{qconv / sum(times[int8].values()):.0%} of the int8 model's kernel time; "
                     f"quantize/dequantize/transpose glue {glue:.0f} µs")
        self.notes.append(note)

    # ------------------------------------------------------------------ timing and choice
    def time(self, names: Iterable[str]) -> dict[str, dict[str, float]]:
        chosen = {n: self.predictors[n] for n in names}
        return speed(chosen, self.data, self.spec.threads, self.spec.warmup, self.spec.repeats)

    def default_int8(self, timings: dict[str, dict[str, float]]) -> str | None:
        """Fastest int8 path at batch 1 among those within MAX_SCORE_DROP of fp32's dev score
        (chosen on dev, so the test score stays an honest estimate of the chosen model); paths
        within TIE of the fastest count as equally fast, and then PREFERENCE decides (so two
        formats that run the same kernels do not swap places with timing noise)."""
        candidates = [n for n in INT8_PATHS if n in self.entries and n in timings]
        if not candidates:
            return None
        floor = self.entries["fp32"]["dev_score"] - MAX_SCORE_DROP
        good = [n for n in candidates if self.entries[n]["dev_score"] >= floor] or candidates
        fastest = min(timings[n]["latency_ms_batch1"] for n in good)
        tied = [n for n in good if timings[n]["latency_ms_batch1"] <= fastest * (1 + TIE)]
        return min(tied, key=PREFERENCE.index)


def compress_run(run_dir: str | Path, overrides: Iterable[str] = (), data: DataBundle | None = None,
                 config: ExperimentConfig | None = None, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Compress the student of `run_dir`; returns results.json as updated on disk."""
    run = load_run(run_dir, overrides, data=data, config=config)
    spec = run.spec
    run.files.out_dir.mkdir(exist_ok=True)
    c = Compressor(run, echo)
    echo(f"compressing {run.files.run_dir} (student: {', '.join(c.names)})")
    methods = set(spec.methods)
    c.fp32()
    if "prune_unstructured" in methods:
        c.pruned_unstructured()
    if "prune_structured" in methods:
        c.pruned_structured()
    if c.text:
        c.notes.append(f"ONNX export and int8 quantization skipped: the student reads "
                       f"{', '.join(repr(m) for m in c.text)} (text), which the tensor-only ONNX wrapper cannot "
                       "take; text encoder outputs are memoized per string, so latency excludes the text encoder "
                       "for repeated inputs")
    else:
        if "int8_dynamic" in methods:
            c.int8("int8_dynamic", "int8_dynamic", run.student, "fp32")
        if "int8_static" in methods:
            c.int8("int8_static_fx", "int8_static_fx", run.student, "fp32")
        if "onnx" in methods:
            c.onnx()
    # which int8 path is fastest here decides the default, and what the pruned student gets
    first = c.time(["fp32", *[n for n in INT8_PATHS if n in c.entries]])
    default = c.default_int8(first)
    if default is not None and c.structured is not None:
        c.int8("pruned_structured_int8", default, c.structured, "pruned_structured")
    echo(f"timing {len(c.entries)} models ({spec.threads} thread(s), {spec.repeats} runs each)")
    timings = c.time(list(c.entries))
    final = c.default_int8(timings)
    fp32_latency = timings["fp32"]["latency_ms_batch1"]
    for name, entry in c.entries.items():
        entry.update(timings[name])
        entry["speedup_batch1"] = round(fp32_latency / entry["latency_ms_batch1"], 3)
    if final is not None:
        c.entries[final]["default_int8"] = True
        c.notes.insert(0, _default_note(c, final, default))
    c.profile_onnx(final)
    results = run.results
    results["compressed"] = c.entries
    settings = {"cpu": report.cpu_name(), "threads": spec.threads, "repeats": spec.repeats, "warmup": spec.warmup,
                "torch": torch.__version__, "onnxruntime": _ort_version()}
    write_text_atomic(run.files.run_dir / "compress.md",
                      report.markdown(run.config.experiment_name, c.entries, settings, c.notes))
    write_json_atomic(run.files.results, results)
    echo(report.table(c.entries))
    return results


def _default_note(c: Compressor, final: str, first: str | None) -> str:
    e, fp32 = c.entries[final], c.entries["fp32"]
    within = e["dev_score"] >= fp32["dev_score"] - MAX_SCORE_DROP
    note = (f"default int8 path: {final}, the fastest int8 model at batch 1 (ties within 5% go to QDQ) "
            f"{'within 0.01 of' if within else '(none is within 0.01 of'} the fp32 dev score"
            f"{'' if within else ')'}: {e['latency_ms_batch1']:.3f} ms vs fp32 {fp32['latency_ms_batch1']:.3f} ms "
            f"({e['speedup_batch1']:.2f}x), score {e['score']:.4f} vs {fp32['score']:.4f}")
    if "onnx_fp32" in c.entries and final != "onnx_fp32":
        onnx = c.entries["onnx_fp32"]
        note += (f"; against the fp32 model in onnxruntime ({onnx['latency_ms_batch1']:.3f} ms) it is "
                 f"{onnx['latency_ms_batch1'] / e['latency_ms_batch1']:.2f}x faster")
    if first is not None and first != final:
        note += f"; pruned_structured_int8 used {first}, which was fastest in the first timing pass"
    return note


def _ort_version() -> str:
    try:
        import onnxruntime

        return onnxruntime.__version__
    except ImportError:  # pragma: no cover - onnxruntime is a dependency
        return "not installed"
