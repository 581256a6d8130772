"""Where the time of an ONNX model goes: onnxruntime's own profiler, per operator type.

Used to explain, with numbers, what limits an int8 model against its fp32 export (which
operators got faster, by how much, and what quantize/dequantize glue costs).
"""

from __future__ import annotations

import json
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np


def op_times(path: Path, feed: dict[str, np.ndarray], threads: int, runs: int = 100,
             warmup: int = 20) -> dict[str, float]:
    """{operator type: microseconds per run}, the sum over its nodes of each node's median
    kernel time over `runs` profiled runs (after `warmup`), largest first."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as work:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(work) / "profile")
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(warmup + runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_node: dict[str, list[float]] = defaultdict(list)
    op_of: dict[str, str] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_node[event["name"]].append(event["dur"])
            op_of[event["name"]] = event["args"]["op_name"]
    totals: dict[str, float] = defaultdict(float)
    for node, durations in per_node.items():
        totals[op_of[node]] += statistics.median(durations[warmup:] or durations)
    return dict(sorted(((op, round(t, 1)) for op, t in totals.items()), key=lambda kv: -kv[1]))


def describe(times: dict[str, float], top: int = 5) -> str:
    total = sum(times.values())
    parts = [f"{op} {t:.0f}" for op, t in list(times.items())[:top]]
    return f"{total:.0f} µs in kernels ({', '.join(parts)}{', ...' if len(times) > top else ''})"
