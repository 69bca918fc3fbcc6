"""`run_synth`: plan → shard workers (fertk.synth.distribute: local, torchrun or ray) → manifest and card.

Stages. `prepare_job` checks everything that can fail on bad input before any shard work, makes the
execution choices concrete (fertk.synth.execution) and records them with the content options in
.fertk/options.json (fertk.synth.dataset). `select_shards` finds this process's unfinished shards.
A distributor runs them through `ShardWorker`s (fertk.synth.worker): the engine generates while a
writer thread encodes and commits (fertk.synth.writer). `finish` merges the manifest and writes the
card, the judge report and the preview.

Resume. A shard counts as done only when its record (written last, by rename, holding every
file's size and sha256) exists; a rerun skips those and rewrites the rest from scratch, so a run
killed at any moment and rerun gives byte-identical files.

Determinism. Shards are a pure function of (options, execution, shard index). Options that decide
the data (CONTENT_OPTIONS) are recorded in .fertk/options.json and a rerun with different ones is
refused unless `force`; execution choices that can move a pixel by a grey level are recorded and
followed (fertk.synth.execution); `fertk synth verify` reports shards whose recorded choices differ.
Encode workers, ranks, Ray workers and hosts never change a byte.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fertk.core.errors import FertkError
from fertk.core.progress import Progress
from fertk.data.shards import (
    FORMATS, DatasetLayout, is_synth_dataset, merge_manifest, options_fingerprint, read_json, read_options,
    remove_stale_dataset_temps, remove_stale_temps, shard_done, write_json_atomic,
)
from fertk.engines.choice import GenerationChoice
from fertk.models.pipeline import build_pipeline
from fertk.models.judges import load_judge
from fertk.synth.dataset import content_options, dataset_card, prepare_out, weights_hashes
from fertk.synth.distribute import Distributed, placement_for, run_local
from fertk.synth.execution import Execution, Placement, auto_choice
from fertk.synth.options import FORMAT_VERSION, SynthOptions, SynthResult
from fertk.synth.plan import SeedPlan, Shard
from fertk.synth.preview import check_preview_path, write_preview
from fertk.synth.ray_runner import connect_ray, run_on_ray
from fertk.synth.report import synth_report
from fertk.synth.worker import ShardWorker, WorkerSetup

__all__ = ["FORMATS", "SynthOptions", "SynthResult", "run_synth"]

STALE_TEMP_AGE_S = 600.0   # under torchrun, a dataset-level temp file this old is no live merge


@dataclass
class Job:
    """A run's resolved inputs, fixed before any shard work."""

    options: SynthOptions          # precision, backend, device, batch and compile made concrete
    plan: SeedPlan
    layout: DatasetLayout
    pipeline: Any
    where: Placement
    record: dict[str, Any]         # .fertk/options.json
    hashes: dict[str, str | None]
    execution: Execution
    choice: GenerationChoice | None

    @property
    def setup(self) -> WorkerSetup:
        """What every shard worker of this run is built from."""
        return WorkerSetup(self.options, self.execution, self.record, self.where.rank)

    @property
    def gpu_choice(self) -> bool:
        """`--backend auto` picked a GPU torch engine (compiled and/or CUDA graphs) for a new dataset."""
        return self.choice is not None and bool(self.choice.options)


def prepare_job(options: SynthOptions, where: Placement) -> Job:
    """Check the inputs, make the execution concrete and create or reuse the output directory."""
    plan = options.plan()
    root = Path(options.out)
    layout = DatasetLayout(root, options.format)
    if options.preview and where.rank == 0:
        check_preview_path(options.preview)
    pipeline = build_pipeline(options.pipeline_config())
    recorded = read_options(root) if is_synth_dataset(root) and not options.force else {}
    options, choice = auto_choice(options, pipeline, plan, recorded, where)
    hashes = weights_hashes(options)
    record = {
        "format_version": FORMAT_VERSION,
        "options": content_options(options, hashes),
        "plan": plan.to_dict(),
        "num_shards": plan.num_shards,
        "pipeline": {"latent_kind": pipeline.latent_kind, "latent_dim": pipeline.latent_dim},
    }
    for judge in dict.fromkeys(j for j in (options.filter, options.judge) if j):
        load_judge(judge)  # a bad judge fails before the output directory is touched
    graphs = choice is not None and bool(choice.options.get("cuda_graphs"))
    execution = prepare_out(options, layout, record, plan, where, cuda_graphs=graphs)
    if choice is not None and choice.options:
        execution.compile_reason = choice.reason
    options = replace(options, backend=execution.backend, device=execution.device, batch=execution.batch,
                      compile=execution.compile)
    return Job(options, plan, layout, pipeline, where, record, hashes, execution, choice)


def select_shards(job: Job) -> tuple[list[Shard], int]:
    """This process's unfinished shards and how many of its shards were already done."""
    layout, where = job.layout, job.where
    mine = job.plan.shards_for_rank(where.rank, where.world)
    fingerprint = options_fingerprint(job.record)
    # A record made under other options or other execution choices (a --force race under torchrun)
    # never counts as done.
    todo = [s for s in mine if not shard_done(layout, s.index, fingerprint, job.record["execution"])]
    # Temporary files of a killed run: this rank's shards' are its own (no other live rank writes
    # them); the dataset-level ones only where their process is gone (and, under torchrun, where
    # they are too old to be another host's merge in progress).
    for shard in mine:
        remove_stale_temps(layout, shard.index)
    if where.rank == 0:
        remove_stale_dataset_temps(layout, min_age_s=0.0 if where.world == 1 else STALE_TEMP_AGE_S)
    return todo, len(mine) - len(todo)


def _engine_desc(job: Job, done: Distributed) -> dict[str, Any]:
    described = done.described or {"engine": {"backend": job.execution.backend, "device": job.execution.device},
                                   "fp16_layers": None}
    desc = {**described["engine"], "compile_reason": job.execution.compile_reason,
            "execution": job.record["execution"], "fp16_layers": described["fp16_layers"]}
    if job.choice is not None:
        desc["choice"] = job.choice.to_dict()
    if done.parity is not None:
        desc["parity_vs_fp32"] = done.parity
    return desc


def _filter_stats(job: Job, done: Distributed) -> dict[str, Any] | None:
    if not job.options.filter:
        return None
    s = done.stats
    retries = s.retries_per_emotion or [0] * len(job.plan.emotions)
    return {"threshold": job.options.filter_threshold, "attempts": s.attempts, "rejected": s.rejected,
            "retries_per_emotion": dict(zip(job.plan.emotions, retries)),
            "rejection_rate": s.rejected / s.attempts if s.attempts else 0.0}


def summarize(job: Job, done: Distributed, skipped: int, complete: bool, started: float) -> SynthResult:
    """The run summary (this process's work, plus dataset-level state)."""
    plan, s, layout = job.plan, done.stats, job.layout
    engine_faces = s.engine_items * len(plan.emotions)  # filter retries included
    return SynthResult(
        out=str(layout.root), format=job.options.format, identities=plan.n, faces=plan.faces,
        emotions=list(plan.emotions), shards_total=plan.num_shards, shards_written=s.shards,
        shards_skipped=skipped, faces_written=s.faces, seconds=round(time.perf_counter() - started, 3),
        faces_per_s=round(s.faces / s.seconds, 1) if s.seconds > 0 and s.faces else 0.0,
        engine_faces_per_s=round(engine_faces / s.engine_seconds, 1) if s.engine_seconds > 0 else 0.0,
        complete=complete, rank=job.where.rank, world_size=job.where.world,
        manifest=str(layout.manifest_path) if complete else None,
        filter=_filter_stats(job, done), engine=_engine_desc(job, done), warmup_seconds=done.warmup_seconds,
        writer_cpu_us_per_face=round(1e6 * s.writer_cpu_seconds / s.faces, 1) if s.faces else 0.0,
        distributor=job.options.distributor, shards_retried=done.retried, failures=done.failures,
    )


def write_card(job: Job, done: Distributed, result: SynthResult) -> None:
    """The dataset card (when shards were written or it is missing) and the judge's block in it."""
    layout = job.layout
    if result.complete and (result.shards_written or not layout.card_path.is_file()):
        card = dataset_card(job.options, layout, job.plan, job.pipeline, result.engine,
                            (done.described or {}).get("scorer"), result, job.hashes)
        write_json_atomic(layout.card_path, card)
    if result.complete:
        result.card = str(layout.card_path)
    if result.complete and job.options.judge and job.where.rank == 0:
        judged = synth_report(layout.root, job.options.judge, backend=job.options.backend,
                              device=job.execution.device)
        card = read_json(layout.card_path)
        card["judge"] = result.judge = judged.summary()
        write_json_atomic(layout.card_path, card)


def write_preview_into(job: Job, result: SynthResult, worker: ShardWorker | None) -> None:
    """--preview, last: a failure here (the path was checked, but disks fill and folders go) never
    costs the manifest or the card; it is reported in the result instead."""
    if not job.options.preview or job.where.rank != 0:
        return
    own = None
    try:
        if worker is None:  # ray: the driver opens an engine of its own for the few preview faces
            worker = own = ShardWorker(job.setup, job.pipeline)
        result.preview = str(write_preview(job.options.preview, worker.generator, job.plan))
    except FertkError as exc:
        result.preview_error = str(exc)
    finally:
        if own is not None:
            own.close()


def run_synth(options: SynthOptions, *, progress: Progress | None = None) -> SynthResult:
    """Generate (or resume) the dataset described by `options` into `options.out`."""
    started = time.perf_counter()
    where = placement_for(options.distributor)
    # Ray is joined first: an unreachable cluster is refused before the output directory is touched.
    ray, own_ray = connect_ray(options.ray_address) if options.distributor == "ray" else (None, False)
    worker = None
    try:
        job = prepare_job(options, where)
        todo, skipped = select_shards(job)
        if ray is not None:
            job.pipeline.set_fp16_layers(device=job.execution.device, precision=job.options.precision,
                                         target="torch" if job.execution.backend == "torch" else "export")
            done = run_on_ray(ray, job.setup, todo, progress=progress, started=started,
                              max_retries=job.options.max_shard_retries)
        else:
            worker = ShardWorker(job.setup, job.pipeline)
            done = run_local(worker, job.plan, todo, progress=progress, started=started, parity=job.gpu_choice or bool(job.options.translator_precision))
        complete = merge_manifest(job.layout, job.plan.num_shards, options_fingerprint(job.record))
        result = summarize(job, done, skipped, complete, started)
        write_card(job, done, result)
        write_preview_into(job, result, worker)
        return result
    finally:
        if worker is not None:
            worker.close()
        if own_ray:
            ray.shutdown()
