"""Synth throughput and memory: engine-only vs end-to-end faces/s per backend, peak RSS vs n.

    python benchmarks/synth/bench_synth.py                       # defaults below
    python benchmarks/synth/bench_synth.py --n 3000 --variants torch,torch-compile,ort \
        --memory-ns 1000,100000 --out benchmarks/synth/results/run.json

engine-only: the fused graph on the engine alone, fed the seed plan's latents batch after batch
(no encoding, no disk), after a warm-up call. end-to-end: `run_synth` into a temporary directory
with the same engine options (generation, PNG encoding, tar writing, manifest), timed from the
first batch to the last committed shard (the engine build / torch.compile is reported apart as
warmup_seconds). Peak RSS: each n runs in a fresh process; ru_maxrss of that child.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {  # name -> (backend, compile)
    "torch": ("torch", False),
    "torch-compile": ("torch", True),
    "ort": ("ort", False),
}


def engine_only(n: int, batch: int, backend: str, compile_graph: bool) -> dict:
    """faces/s of the generation graph alone over n identities (plan latents, fixed batch)."""
    import numpy as np

    from fertk.models.pipeline import build_pipeline
    from fertk.synth.engines import open_generation_engine
    from fertk.synth.plan import SeedPlan

    pipeline = build_pipeline()
    plan = SeedPlan(n, 0, pipeline.emotions, n)
    opts = {"compile": True} if compile_graph else {}
    tic = time.perf_counter()
    engine = open_generation_engine(pipeline, backend=backend, device="cpu", precision="fp32", **opts)
    _, latent, intensity = plan.inputs(np.arange(batch), pipeline.latent_dim, pipeline.latent_kind)
    engine.run({"latent": latent, "intensity": intensity})
    warmup = time.perf_counter() - tic
    faces = 0
    tic = time.perf_counter()
    for first in range(0, n - batch + 1, batch):
        _, latent, intensity = plan.inputs(np.arange(first, first + batch), pipeline.latent_dim, pipeline.latent_kind)
        faces += int(np.asarray(engine.run({"latent": latent, "intensity": intensity})["faces"]).shape[0]) * 6
    seconds = time.perf_counter() - tic
    engine.close()
    return {"faces": faces, "seconds": round(seconds, 3), "faces_per_s": round(faces / seconds, 1),
            "warmup_seconds": round(warmup, 2)}


def end_to_end(n: int, batch: int, backend: str, compile_graph: bool, fmt: str, workers: int) -> dict:
    """run_synth into a temporary directory; its own faces/s (warm-up excluded)."""
    from fertk.synth import SynthOptions, run_synth

    with tempfile.TemporaryDirectory(prefix="fertk-bench-") as tmp:
        tic = time.perf_counter()
        result = run_synth(SynthOptions(n=n, out=str(Path(tmp) / "d"), batch=batch, backend=backend,
                                        compile=compile_graph, format=fmt, workers=workers,
                                        shard_size=max(batch, min(1000, n))))
        wall = time.perf_counter() - tic
    return {"faces": result.faces_written, "faces_per_s": result.faces_per_s,
            "engine_faces_per_s_inside": result.engine_faces_per_s, "warmup_seconds": result.warmup_seconds,
            "writer_cpu_us_per_face": result.writer_cpu_us_per_face,
            "wall_seconds": round(wall, 2)}


def peak_rss(n: int, batch: int, backend: str, compile_graph: bool, fmt: str) -> dict:
    """Peak RSS (MiB) of a fresh process generating n identities."""
    code = (
        "import sys, tempfile, resource, json\n"
        "from fertk.synth import SynthOptions, run_synth\n"
        "with tempfile.TemporaryDirectory(prefix='fertk-mem-') as tmp:\n"
        f"    r = run_synth(SynthOptions(n={n}, out=tmp + '/d', batch={batch}, backend={backend!r}, "
        f"compile={compile_graph}, format={fmt!r}))\n"
        "print(json.dumps({'faces': r.faces_written, 'faces_per_s': r.faces_per_s,"
        " 'maxrss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n"
    )
    tic = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"n": n, **data, "wall_seconds": round(time.perf_counter() - tic, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="identities per throughput run (x6 faces)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--variants", default="torch,torch-compile,ort")
    parser.add_argument("--format", default="wds")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--memory-ns", default="", help="comma list of n for the peak-RSS runs (empty: skip)")
    parser.add_argument("--memory-variant", default="torch-compile")
    parser.add_argument("--out", type=Path, default=None, help="write the results JSON here")
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. 'machine loaded')")
    args = parser.parse_args()

    # A private artifact cache: the ort variant exports the graph, and a cache entry made by older
    # renderer code would be reused (the key covers weights and config, not source code).
    os.environ.setdefault("FERTK_CACHE", tempfile.mkdtemp(prefix="fertk-bench-cache-"))
    from fertk.engines import machine_info

    results = {"benchmark": "synth", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "note": args.note,
               "machine": machine_info(), "load_average": os.getloadavg(),
               "settings": {"n": args.n, "batch": args.batch, "format": args.format, "workers": args.workers,
                            "generator": "procedural", "resolution": 64, "emotions": 6},
               "throughput": [], "memory": []}
    for name in [v for v in args.variants.split(",") if v]:
        backend, compile_graph = VARIANTS[name]
        row = {"variant": name, "batch": args.batch}
        try:
            row["engine_only"] = engine_only(args.n, args.batch, backend, compile_graph)
            row["end_to_end"] = end_to_end(args.n, args.batch, backend, compile_graph, args.format, args.workers)
            row["e2e_over_engine"] = round(row["end_to_end"]["faces_per_s"] / row["engine_only"]["faces_per_s"], 3)
        except Exception as exc:  # noqa: BLE001 - a backend that cannot run here is a row, not a crash
            row["error"] = f"{type(exc).__name__}: {exc}"
        results["throughput"].append(row)
        print(json.dumps(row), flush=True)
    for n in [int(v) for v in args.memory_ns.split(",") if v]:
        backend, compile_graph = VARIANTS[args.memory_variant]
        row = peak_rss(n, args.batch, backend, compile_graph, args.format)
        results["memory"].append({"variant": args.memory_variant, **row})
        print(json.dumps(results["memory"][-1]), flush=True)
    if len(results["memory"]) >= 2:
        low, high = results["memory"][0], results["memory"][-1]
        results["memory_growth"] = round(high["maxrss_mib"] / low["maxrss_mib"] - 1.0, 4)
    results["load_average_after"] = os.getloadavg()
    results["self_cpu_seconds"] = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
