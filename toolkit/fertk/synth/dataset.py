"""The output directory's lifecycle: create or reuse it (refusing foreign contents, other options
or conflicting execution choices), remove a replaced dataset's shards (`--force`), and the dataset
card written once every shard is done."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from fertk.core.errors import BackendUnavailableError, DatasetError, OutputExistsError
from fertk.core.io import sha256_file
from fertk.core.versions import __version__, cpu_model, package_version
from fertk.data.shards import (
    MANIFEST_COLUMNS, META_DIR, DatasetLayout, create_json_exclusive, is_synth_dataset, read_json, read_options,
    remove_shard, write_json_atomic,
)
from fertk.models.judges import judge_sha256
from fertk.synth.execution import Execution, Placement, resolve_execution
from fertk.synth.options import CONTENT_OPTIONS, FORMAT_VERSION, OPTION_FLAGS, SynthOptions, SynthResult
from fertk.synth.plan import SeedPlan


def content_options(options: SynthOptions, hashes: dict[str, str | None]) -> dict[str, Any]:
    """The options that decide the bytes, weights named by their sha256."""
    data = options.to_dict()
    content = {key: data[key] for key in CONTENT_OPTIONS}
    # Weights are identified by content, not by where they sit.
    for key in ("generator_weights", "translator_weights", "filter"):
        content[key] = hashes.get(key)
    return content


def weights_hashes(options: SynthOptions) -> dict[str, str | None]:
    """sha256 of the generator, translator and filter weights (None where there are none)."""
    hashes: dict[str, str | None] = {}
    for key in ("generator_weights", "translator_weights", "filter"):
        value = getattr(options, key)
        if key == "filter" and value:
            hashes[key] = judge_sha256(value)
        elif value and Path(value).is_file():
            hashes[key] = sha256_file(value)
        elif value and Path(value).is_dir() and (Path(value) / "model.safetensors").is_file():
            hashes[key] = sha256_file(Path(value) / "model.safetensors")
        else:
            hashes[key] = None
    return hashes


def prepare_out(options: SynthOptions, layout: DatasetLayout, record: dict[str, Any], plan: SeedPlan,
                where: Placement, *, cuda_graphs: bool = False) -> Execution:
    """Create or reuse the output directory; refuse foreign contents, other options or conflicting
    execution choices (unless force). Records the run's execution choices and returns them."""
    root = layout.root
    if root.exists() and not root.is_dir():
        raise OutputExistsError(f"--out {root} exists and is not a directory")
    for _attempt in range(3):
        if is_synth_dataset(root):
            old = read_options(root)
            old_content = old.get("options", {})
            differing = [key for key in CONTENT_OPTIONS if old_content.get(key) != record["options"].get(key)]
            if differing and not options.force:
                key = differing[0]
                raise OutputExistsError(
                    f"{root} holds a dataset made with different options: {OPTION_FLAGS[key]} was "
                    f"{old_content.get(key)!r}, now {record['options'].get(key)!r}"
                    + (f" (and {len(differing) - 1} more)" if len(differing) > 1 else ""),
                    hint="use the same options to resume, another --out, or --force to replace it")
            try:
                execution = resolve_execution(options, plan, None if differing else old.get("execution"), root,
                                              where, cuda_graphs=cuda_graphs)
            except (OutputExistsError, BackendUnavailableError):
                if not options.force:
                    raise
                execution = resolve_execution(options, plan, None, root, where, cuda_graphs=cuda_graphs)
                differing = ["execution"]
            if differing:
                remove_old(root, old, where)
            record["execution"] = execution.record()
            write_json_atomic(layout.options_path, record)
            return execution
        if root.is_dir() and not options.force and any(entry.name != META_DIR for entry in root.iterdir()):
            # (A directory holding only .fertk is one that another rank is initialising right now.)
            raise OutputExistsError(f"--out {root} is not empty and is not a fertk synth dataset",
                                    hint="choose an empty or new directory, or pass --force to write into it")
        execution = resolve_execution(options, plan, None, root, where, cuda_graphs=cuda_graphs)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatasetError(f"cannot create {root}: {exc.strerror or exc}") from None
        record["execution"] = execution.record()
        # The first process to create options.json decides; the others (torchrun ranks starting
        # together, maybe on hosts that would decide otherwise) loop and follow it.
        if create_json_exclusive(layout.options_path, record):
            return execution
    raise DatasetError(f"cannot initialise {layout.options_path}: it keeps changing under this run",
                       hint="is another `fertk synth` with other options writing into the same --out?")


def remove_old(root: Path, old: dict[str, Any], where: Placement) -> None:
    """--force: each rank deletes its share of the previous dataset's shards (disjoint, no races)."""
    old_layout = DatasetLayout(root, old["options"]["format"])
    plan = old["plan"]
    n, size = int(plan["n"]), int(plan["shard_size"])
    for shard in range(where.rank, int(old["num_shards"]), where.world):
        start, stop = shard * size, min((shard + 1) * size, n)
        remove_shard(old_layout, shard, identities=range(start, stop), emotions=plan["emotions"])
    if where.rank == 0:
        old_layout.manifest_path.unlink(missing_ok=True)
        old_layout.card_path.unlink(missing_ok=True)


def versions() -> dict[str, str | None]:
    """Versions of fertk and the packages that make the bytes."""
    names = ("torch", "numpy", "opencv-python-headless", "onnxruntime", "webdataset")
    return {"fertk": __version__, "python": platform.python_version(),
            **{name: package_version(name) for name in names}}


def dataset_card(options: SynthOptions, layout: DatasetLayout, plan: SeedPlan, pipeline: Any,
                 engine_desc: dict[str, Any], scorer_desc: dict[str, Any] | None, result: SynthResult,
                 hashes: dict[str, str | None]) -> dict[str, Any]:
    """dataset_card.json: what made the data, with which engine, how much, how fast."""
    shard_seconds = 0.0
    attempts = rejected = 0
    retries = {e: 0 for e in plan.emotions}
    for s in range(plan.num_shards):
        rec = read_json(layout.record_path(s))
        shard_seconds += float(rec.get("seconds", 0.0))
        attempts += rec.get("filter", {}).get("attempts", 0)
        rejected += rec.get("filter", {}).get("rejected", 0)
        for e, n in rec.get("filter", {}).get("retries_per_emotion", {}).items():
            retries[e] = retries.get(e, 0) + int(n)
    pipe_card = pipeline.card()
    return {
        "fertk_dataset": "synth",
        "format_version": FORMAT_VERSION,
        "format": options.format,
        "layout": {"wds": "shards/shard-NNNNNN.tar (<key>.png/.cls/.json)",
                   "npy": "shards/shard-NNNNNN.images.npy + .labels.npy",
                   "folder": "images/<emotion>/id<identity>.png"}[options.format],
        "manifest": {"file": layout.manifest_path.name, "format": "csv", "columns": list(MANIFEST_COLUMNS)},
        "classes": list(plan.emotions),
        "counts": {"identities": plan.n, "faces": plan.faces, "per_emotion": {e: plan.n for e in plan.emotions},
                   "shards": plan.num_shards, "shard_size_identities": plan.shard_size},
        "seed_plan": plan.to_dict(),
        "generator": {"name": options.generator, "weights": options.generator_weights,
                      "sha256": hashes.get("generator_weights"), "card": pipe_card.get("generator"),
                      "truncation": options.truncation if options.generator == "stylegan2" else None,
                      "style": options.style if options.generator == "procedural" else None,
                      "framing": options.framing if options.generator == "procedural" else None},
        "translator": None if options.generator == "procedural" else {
            "name": "stargan", "weights": options.translator_weights,
            "sha256": hashes.get("translator_weights"), "card": pipe_card.get("translator")},
        "pipeline": {k: v for k, v in pipe_card.items() if k not in ("generator", "translator")},
        "engine": engine_desc,
        "precision": options.precision,
        "filter": None if not options.filter else {
            "model": options.filter, "sha256": hashes.get("filter"), "threshold": options.filter_threshold,
            "max_attempts": options.filter_max_attempts, "attempts": attempts, "rejected": rejected,
            "rejection_rate": rejected / attempts if attempts else 0.0,
            "retries_per_emotion": retries,
            "retries_note": "identity regenerations in which each emotion's judge probability was below the threshold",
            "scorer": scorer_desc},
        "options": options.to_dict(),
        "versions": versions(),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform()},
        "timing": {"shard_seconds_total": round(shard_seconds, 3),
                   "last_run": {"seconds": result.seconds, "warmup_seconds": result.warmup_seconds,
                                "faces_written": result.faces_written,
                                "faces_per_s": result.faces_per_s, "engine_faces_per_s": result.engine_faces_per_s,
                                "world_size": result.world_size}},
    }
