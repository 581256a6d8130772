"""compress.md: one table row per compressed model, then the notes that explain it."""

from __future__ import annotations

import platform
from typing import Any

from mmdistill.eval.metrics import SCORE_MEANING


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def table(entries: dict[str, Any]) -> str:
    """The markdown table (also what docs/compression.md shows)."""
    fp32 = entries.get("fp32", {})
    head = ("| model | runtime | test score | Δ score | params | non-zero | file | latency b=1 (ms) "
            "| speed-up b=1 | throughput b=32 (/s) | agreement |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, e in entries.items():
        delta = e["score"] - fp32.get("score", e["score"])
        label = f"**{name}**" if e.get("default_int8") else name
        agree = f"{e['agreement']:.3f}" if "agreement" in e else "-"
        lines.append(f"| {label} | {e['runtime']} | {e['score']:.4f} | {delta:+.4f} | {e['params']:,} | "
                     f"{e['nonzero_params']:,} | {_mb(e['file_bytes'])} | {e['latency_ms_batch1']:.3f} | "
                     f"{e.get('speedup_batch1', 1.0):.2f}x | {e['throughput_batch32']:,.0f} | {agree} |")
    return "\n".join(lines)


def markdown(experiment: str, entries: dict[str, Any], settings: dict[str, Any], notes: list[str]) -> str:
    out = [f"# Compressed students of `{experiment}`", "",
           f"Measured on {settings['cpu']} with {settings['threads']} intra-op thread(s) (torch "
           f"{settings['torch']}, onnxruntime {settings['onnxruntime']}); latency and throughput are medians of "
           f"{settings['repeats']} runs at batch 1 and {max(3, settings['repeats'] // 4)} at batch 32 after "
           f"{settings['warmup']} warm-up runs, the models timed in turns. Test score = {SCORE_MEANING}, "
           "on the test split (as results.json `score`); agreement = fraction of test predictions "
           "equal to the fp32 student's; speed-up = fp32 latency / latency. params / non-zero count the "
           "float model a quantized or exported one was made from (BatchNorm included).", "",
           table(entries), ""]
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(out)
