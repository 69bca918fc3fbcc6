"""Measure the statistics behind the suite's learning thresholds over several seeds.

A test that trains something and asserts "accuracy > x" is only as good as the margin between x
and what the run gives on *other* machines: CPUs with other SIMD widths (AVX2 vs AVX-512) or core
counts round differently, and a few hundred optimiser steps turn that into a different run, much
as another seed does. So the bounds in those tests are set from the spread over seeds, and this
script re-measures that spread (run it again when the procedural renderer or a trainer changes):

    PYTHONPATH=toolkit python tests/tools/threshold_sweep.py                 # every probe, default seeds
    PYTHONPATH=toolkit python tests/tools/threshold_sweep.py stargan-short --seeds 0-7 --json sweep.json

For each probe it calls the test module's statistics function once per seed, then prints per
statistic: the values, mean, standard deviation, min / max, the test's bound and how far the worst
seed clears it. A bound that a seed breaks, or that clears the worst seed by less than a quarter
of the seeds' range (at least 0.01), is flagged and the exit code is 1; the suggested bound is the
worst seed minus (plus, for "<" bounds) that margin, rounded outwards. mean -/+ --sigmas standard
deviations is printed for reference.

Not collected by pytest (no test_ prefix); each probe runs single-threaded, `nice` it on a shared
machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

TESTS = Path(__file__).resolve().parents[1]
# The test modules import their helpers as `tests.…` (as pytest runs them from the repository root).
sys.path.insert(0, str(TESTS.parent))

from tests.tools.limits import holds  # noqa: E402


@dataclass(frozen=True)
class Probe:
    """A statistics function in a test module and the bounds its test asserts."""

    module: str                 # path under tests/
    function: str               # (seed, workdir) -> {statistic: value}
    limits: str                 # module attribute: ((statistic, "<" | ">", bound), ...)
    seeds: tuple[int, ...]      # default seeds (the test itself runs the first)
    about: str


PROBES: dict[str, Probe] = {
    "stargan-short": Probe("train/test_stargan_training.py", "short_run_statistics", "SHORT_RUN_LIMITS",
                           tuple(range(8)), "300-step StarGAN run: D's classifier on G's translations (~35 s/seed)"),
    "fer-two-class": Probe("train/test_fer_training.py", "two_class_statistics", "TWO_CLASS_LIMITS",
                           tuple(range(8)), "Table-1 CNN, 2 procedural expressions, 24 epochs (~15 s/seed)"),
    "int8-blobs": Probe("export/test_quantize.py", "int8_statistics", "INT8_LIMITS",
                        tuple(range(8)), "briefly trained FER CNN, QDQ INT8 vs fp32 (~10 s/seed)"),
    "standin-tiny": Probe("experiment/test_standin.py", "standin_statistics", "STANDIN_LIMITS",
                          tuple(range(4)), "the procedural stand-in experiment, tiny preset, 10 cells (~3 min/seed)"),
}


def load_module(relative: str) -> ModuleType:
    """A test module by its path under tests/ (the suite imports by path too: --import-mode=importlib)."""
    path = TESTS / relative
    name = "threshold_sweep_" + path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def parse_seeds(text: str) -> tuple[int, ...]:
    """'0-7' or '0,3,5' or '0-3,10'."""
    seeds: list[int] = []
    for part in text.split(","):
        first, sep, last = part.strip().partition("-")
        seeds.extend(range(int(first), int(last) + 1) if sep else [int(first)])
    return tuple(seeds)


def summarise(values: list[float], op: str, bound: float, sigmas: float) -> dict[str, Any]:
    """Spread of one statistic against its bound.

    The bound must clear the worst seed by a margin of a quarter of the seeds' range (at least
    0.01): "the min over seeds minus a margin". mean -/+ sigmas * std is reported too; with a
    bimodal statistic (a GAN run that has or has not learned yet by step 300) it is often
    vacuous, which is why it is not the rule."""
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    broken = [v for v in values if not holds(v, op, bound)]
    worst = max(values) if op == "<" else min(values)
    margin = max(0.25 * (max(values) - min(values)), 0.01)
    if op == "<":
        suggested = math.ceil((worst + margin) * 100) / 100
        clearance = bound - worst
        gaussian = mean + sigmas * std
    else:
        suggested = math.floor((worst - margin) * 100) / 100
        clearance = worst - bound
        gaussian = mean - sigmas * std
    distance = (bound - mean if op == "<" else mean - bound)
    margin_sigmas = distance / std if std > 0 else (math.inf if distance > 0 else -math.inf)
    return {"values": [round(v, 5) for v in values], "mean": round(mean, 5), "std": round(std, 5),
            "min": round(min(values), 5), "max": round(max(values), 5), "op": op, "bound": bound,
            "worst": round(worst, 5), "clearance": round(clearance, 5), "margin": round(margin, 5),
            "margin_sigmas": round(margin_sigmas, 2) if math.isfinite(margin_sigmas) else margin_sigmas,
            f"mean_{sigmas:g}sd": round(gaussian, 5), "broken_by": len(broken), "suggested": suggested,
            "ok": not broken and clearance >= margin - 1e-12}


def run_probe(name: str, probe: Probe, seeds: tuple[int, ...], sigmas: float,
              say: Callable[[str], None]) -> dict[str, Any]:
    """Every seed through the probe's statistics function, then the summary per statistic."""
    import torch

    module = load_module(probe.module)
    measure = getattr(module, probe.function)
    limits = getattr(module, probe.limits)
    per_seed: list[dict[str, float]] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what the tests use; also keeps a sweep from crowding a shared machine
    try:
        for seed in seeds:
            start = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix=f"sweep-{name}-") as workdir:
                stats = measure(seed, Path(workdir))
            per_seed.append({k: float(v) for k, v in stats.items()})
            say(f"[{name}] seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in stats.items())
                + f" ({time.perf_counter() - start:.0f} s)")
    finally:
        torch.set_num_threads(threads)
    summary = {stat: summarise([s[stat] for s in per_seed], op, bound, sigmas) for stat, op, bound in limits}
    return {"probe": name, "about": probe.about, "module": probe.module, "seeds": list(seeds),
            "per_seed": per_seed, "limits": summary}


def machine() -> dict[str, Any]:
    """Enough to tell two sweeps' machines apart (CPU model, SIMD flags, cores, library versions)."""
    import numpy
    import torch

    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    import os

    return {"cpu": cpu, "cores": os.cpu_count(), "avx2": "avx2" in flags, "avx512f": "avx512f" in flags,
            "torch": torch.__version__, "numpy": numpy.__version__, "python": platform.python_version(),
            "torch_cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")()}


def render(report: dict[str, Any], sigmas: float) -> str:
    """The human-readable table of one probe."""
    lines = [f"== {report['probe']}: {report['about']}  (seeds {report['seeds']})"]
    for stat, s in report["limits"].items():
        flag = "ok" if s["ok"] else ("BROKEN" if s["broken_by"] else "THIN (clears the worst seed by < the margin)")
        lines.append(f"  {stat:>12} {s['op']} {s['bound']:<8g} mean {s['mean']:.4f} sd {s['std']:.4f} "
                     f"min {s['min']:.4f} max {s['max']:.4f}  worst seed clears it by {s['clearance']:.4f} "
                     f"(margin {s['margin']:.4f}; mean {s['margin_sigmas']} sd away)  "
                     f"suggested {s['op']} {s['suggested']:g}  [{flag}]")
        lines.append(f"  {'':>12} values {s['values']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("probes", nargs="*", help=f"probes to run (default all): {', '.join(PROBES)}")
    parser.add_argument("--seeds", help="e.g. 0-7 (default: each probe's own)")
    parser.add_argument("--sigmas", type=float, default=4.0, help="reported: mean -/+ this many standard deviations")
    parser.add_argument("--json", type=Path, help="also write the reports and the machine here")
    args = parser.parse_args(argv)
    names = args.probes or list(PROBES)
    unknown = [n for n in names if n not in PROBES]
    if unknown:
        parser.error(f"unknown probe {unknown[0]!r}; known: {', '.join(PROBES)}")
    host = machine()
    print(f"machine: {host}", file=sys.stderr)
    reports = []
    for name in names:
        probe = PROBES[name]
        seeds = parse_seeds(args.seeds) if args.seeds else probe.seeds
        reports.append(run_probe(name, probe, seeds, args.sigmas, lambda m: print(m, file=sys.stderr, flush=True)))
        print(render(reports[-1], args.sigmas), flush=True)
        if args.json:
            args.json.write_text(json.dumps({"machine": host, "sigmas": args.sigmas, "reports": reports}, indent=1))
    return 0 if all(s["ok"] for r in reports for s in r["limits"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
