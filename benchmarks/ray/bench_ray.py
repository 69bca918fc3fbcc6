"""`fertk synth --distributor ray` (2 local workers) against `--distributor local`, end to end, and
the driver's serial costs that bound scaling to N hosts.

    python benchmarks/ray/bench_ray.py --n 20000 --out benchmarks/ray/results/<machine>.json

1. local: `fertk synth --n N --out DIR/local --json` in a fresh process; wall time of the command.
2. ray: `fertk synth --n N --out DIR/ray --distributor ray --json` in a fresh process (no
   --ray-address: fertk starts a private local Ray with this machine's CPUs, 2 workers here, and
   stops it); wall time of the command, Ray's start-up included. The two datasets are compared
   byte for byte (every file but the records' timings and the card).
3. driver-serial costs, measured in this process: planning (`prepare_job` + `select_shards` on
   the finished dataset), the manifest merge, and the driver's round trip per Ray task (submit,
   wait, get of a no-op task through `run_with_retries`, on a Ray started here; its start-up
   time is recorded too).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _hashes(root: Path) -> dict[str, str]:
    skip = (".fertk/records/", "dataset_card.json")
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.relative_to(root).as_posix().startswith(skip)}


def _cli(args: list[str]) -> tuple[float, dict]:
    """Wall seconds and --json output of one `fertk` command in a fresh process."""
    tic = time.perf_counter()
    ran = subprocess.run([sys.executable, "-c", "from fertk.cli import main; main()", *args, "--json"],
                         capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - tic
    if ran.returncode != 0:
        raise SystemExit(f"fertk {' '.join(args)} failed ({ran.returncode}):\n{ran.stderr[-3000:]}")
    return seconds, json.loads(ran.stdout)


def _noop(index: int) -> int:
    return index


def driver_costs(dataset: Path, n: int, shard_size: int, tasks: int) -> dict:
    """Planning, manifest merge and the per-task driver round trip (seconds)."""
    import ray

    from fertk.data.shards import merge_manifest, options_fingerprint
    from fertk.synth.distribute import placement_for
    from fertk.synth.options import SynthOptions
    from fertk.synth.ray_runner import run_with_retries
    from fertk.synth.run import prepare_job, select_shards

    options = SynthOptions(out=str(dataset), n=n, shard_size=shard_size)
    tic = time.perf_counter()
    job = prepare_job(options, placement_for("local"))
    plan_s = time.perf_counter() - tic
    tic = time.perf_counter()
    todo, skipped = select_shards(job)
    select_s = time.perf_counter() - tic
    assert not todo, "the dataset should be finished"
    repeats = 5
    tic = time.perf_counter()
    for _ in range(repeats):
        assert merge_manifest(job.layout, job.plan.num_shards, options_fingerprint(job.record))
    merge_s = (time.perf_counter() - tic) / repeats
    tic = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    init_s = time.perf_counter() - tic
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(_noop)
        ray.get([task.remote(i) for i in range(4)])  # workers started and warm
        tic = time.perf_counter()
        summary = run_with_retries(ray, lambda i: task.remote(i), list(range(tasks)), max_retries=0)
        round_trip_s = (time.perf_counter() - tic) / tasks
        assert len(summary.results) == tasks
    finally:
        ray.shutdown()
    shards = job.plan.num_shards
    return {"shards": shards, "prepare_job_s": round(plan_s, 3), "select_shards_s": round(select_s, 4),
            "select_shards_per_shard_ms": round(1e3 * select_s / shards, 3),
            "merge_manifest_s": round(merge_s, 4), "merge_manifest_per_shard_ms": round(1e3 * merge_s / shards, 3),
            "ray_init_s": round(init_s, 2), "noop_tasks": tasks,
            "driver_round_trip_per_task_ms": round(1e3 * round_trip_s, 3)}


def main() -> None:
    """Run the comparison and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--noop-tasks", type=int, default=200)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from fertk.core.versions import collect_info

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fertk-bench-ray-") as tmp:
        root = Path(tmp)
        common = ["synth", "--n", str(args.n), "--shard-size", str(args.shard_size)]
        local_s, local = _cli([*common, "--out", str(root / "local")])
        load_mid = os.getloadavg()
        ray_s, on_ray = _cli([*common, "--out", str(root / "ray"), "--distributor", "ray"])
        identical = _hashes(root / "local") == _hashes(root / "ray")
        costs = driver_costs(root / "ray", args.n, args.shard_size, args.noop_tasks)
    record = {
        "benchmark": "fertk synth --distributor ray (2 local workers) vs local",
        "machine": collect_info(()), "cpus": os.cpu_count(),
        "load_average_before": load_before, "load_average_between": load_mid, "load_average_after": os.getloadavg(),
        "settings": {"n": args.n, "shard_size": args.shard_size, "faces": local["faces"],
                     "engine": local["engine"].get("backend"), "compile": local["engine"]["execution"]["compile"]},
        "local": {"wall_s": round(local_s, 2), "faces_per_s_end_to_end": round(local["faces"] / local_s, 1),
                  "run_synth_seconds": local["seconds"], "warmup_seconds": local["warmup_seconds"]},
        "ray": {"wall_s": round(ray_s, 2), "faces_per_s_end_to_end": round(on_ray["faces"] / ray_s, 1),
                "run_synth_seconds": on_ray["seconds"], "shards_retried": on_ray["shards_retried"],
                "failures": on_ray["failures"]},
        "overhead_end_to_end": round(ray_s / local_s - 1, 4),
        "same_bytes": identical,
        "driver": costs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
