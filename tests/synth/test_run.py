"""run_synth in process: determinism, formats, resume, option guards, filter, preview, bad weights."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from fertk.data.shards import DatasetLayout, read_arrays, verify_dataset
from fertk.core.emotions import EKMAN
from fertk.core.errors import CheckpointError, InvalidInputError, OutputExistsError
from fertk.synth import SynthOptions, run_synth
from fertk.synth.plan import SeedPlan

# 9 identities, shards of 4 (4, 4, 1), batches of 3: shards span several batches, the last partial.
SMALL = dict(n=9, shard_size=4, batch=3)


def _opts(out, **kw) -> SynthOptions:
    return SynthOptions(out=str(out), **{**SMALL, **kw})


def test_wds_run_is_deterministic_balanced_and_verifiable(tmp_path, hashes):
    first = run_synth(_opts(tmp_path / "a", seed=5, intensity="0.5:1"))
    second = run_synth(_opts(tmp_path / "b", seed=5, intensity="0.5:1", batch=4, workers=2))
    assert first.complete and first.faces_written == 54 and first.shards_written == 3
    assert hashes(tmp_path / "a") == hashes(tmp_path / "b")
    assert verify_dataset(tmp_path / "a").ok
    manifest = pd.read_csv(tmp_path / "a" / "manifest.csv")
    assert manifest.groupby("emotion").size().to_dict() == {e: 9 for e in EKMAN}
    assert manifest.groupby("identity").size().tolist() == [6] * 9
    plan = SeedPlan(9, 5, EKMAN, 4, (0.5, 1.0))
    seeds, _, intensity = plan.inputs(np.arange(9), 40, "uniform")
    assert manifest["seed"].astype("uint64").tolist()[::6] == seeds.tolist()
    assert np.allclose(manifest["intensity"].to_numpy().reshape(9, 6), intensity)
    card = json.loads((tmp_path / "a" / "dataset_card.json").read_text())
    assert card["counts"]["faces"] == 54 and card["engine"]["backend"] == "torch"
    assert card["generator"]["name"] == "procedural" and card["seed_plan"]["seed_scheme"] == "splitmix64-v1"
    other_seed = run_synth(_opts(tmp_path / "c", seed=6, intensity="0.5:1"))
    assert other_seed.complete
    assert hashes(tmp_path / "a")["shards/shard-000000.tar"] != hashes(tmp_path / "c")["shards/shard-000000.tar"]


def test_formats_hold_the_same_faces(tmp_path):
    images = {}
    for fmt in ("wds", "npy", "folder"):
        run_synth(_opts(tmp_path / fmt, format=fmt, neutral=True))
        arrays = read_arrays(tmp_path / fmt)
        assert arrays.classes == EKMAN + ("neutral",)
        images[fmt] = arrays.images
        assert verify_dataset(tmp_path / fmt).ok
    assert np.array_equal(images["wds"], images["npy"]) and np.array_equal(images["wds"], images["folder"])
    assert sorted(p.name for p in (tmp_path / "folder" / "images").iterdir()) == sorted(EKMAN + ("neutral",))
    assert len(list((tmp_path / "folder" / "images" / "anger").glob("*.png"))) == 9
    mm = np.load(tmp_path / "npy" / "shards" / "shard-000000.images.npy", mmap_mode="r")
    assert mm.shape == (28, 64, 64) and mm.dtype == np.uint8


def test_resume_skips_finished_and_redoes_partial_shards(tmp_path, hashes):
    reference = tmp_path / "ref"
    run_synth(_opts(reference))
    out = tmp_path / "out"
    run_synth(_opts(out))
    layout = DatasetLayout(out, "wds")
    # Simulate a run killed mid-shard: shard 1 lost its record and holds a torn temporary file.
    layout.record_path(1).unlink()
    (out / "manifest.csv").unlink()
    (out / "shards" / "shard-000001.tar.tmp").write_bytes(b"torn")
    (out / "shards" / "shard-000001.tar").write_bytes(b"stale")
    result = run_synth(_opts(out))
    assert (result.shards_written, result.shards_skipped) == (1, 2)
    assert not (out / "shards" / "shard-000001.tar.tmp").exists()
    assert hashes(out) == hashes(reference)
    again = run_synth(_opts(out))
    assert (again.shards_written, again.shards_skipped, again.complete) == (0, 3, True)


def test_different_options_are_refused_unless_forced(tmp_path):
    out = tmp_path / "d"
    run_synth(_opts(out, format="folder"))
    with pytest.raises(OutputExistsError, match="--seed was 0, now 1"):
        run_synth(_opts(out, format="folder", seed=1))
    with pytest.raises(OutputExistsError, match="--emotions/--neutral"):
        run_synth(_opts(out, format="folder", neutral=True))
    # Execution choices that do not change bytes (eager torch: batch; encode workers) are accepted.
    assert run_synth(_opts(out, format="folder", batch=5, workers=2)).shards_skipped == 3
    forced = run_synth(_opts(out, format="npy", n=5, emotions=("anger", "fear"), force=True))
    assert forced.complete and forced.faces == 10
    assert not (out / "images").exists() or not any((out / "images").rglob("*.png"))
    assert verify_dataset(out).ok
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not a fertk synth dataset"):
        run_synth(_opts(foreign))
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputExistsError, match="not a directory"):
        run_synth(_opts(tmp_path / "file"))


def test_bad_options_fail_before_any_work(tmp_path):
    out = tmp_path / "never"
    with pytest.raises(CheckpointError, match="not found"):
        run_synth(_opts(out, generator="stylegan2", generator_weights=str(tmp_path / "nope.pkl"),
                        translator_weights=str(tmp_path / "nope.ckpt")))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not weights at all")
    with pytest.raises(CheckpointError):
        run_synth(_opts(out, generator="stylegan2", generator_weights=str(bad), translator_weights=str(bad)))
    with pytest.raises(InvalidInputError):
        run_synth(_opts(out, format="parquet"))
    with pytest.raises(InvalidInputError):
        run_synth(_opts(out, emotions=("anger", "boredom")))
    assert not out.exists()


def test_filter_regenerates_from_reserved_seeds_and_stays_balanced(tmp_path, hashes):
    from fertk.models.pipeline import build_pipeline
    from fertk.models.fer_cnn import FerCNN, save_fer_model
    from fertk.synth.engines import FaceScorer

    torch.manual_seed(0)
    weights = tmp_path / "fer.safetensors"
    save_fer_model(FerCNN(), weights)
    # Threshold at the median worst score of first attempts: about half the identities are rejected.
    plan = SeedPlan(9, 0, EKMAN, 4)
    pipeline = build_pipeline()
    _, latent, intensity = plan.inputs(np.arange(9), pipeline.latent_dim, "uniform")
    with torch.no_grad():
        faces = pipeline(torch.from_numpy(latent), torch.from_numpy(intensity)).numpy()
    scorer = FaceScorer(weights, backend="torch", device="cpu", precision="fp32")
    worst = scorer.score(faces, EKMAN).min(axis=1)
    threshold = float(np.median(worst))
    result = run_synth(_opts(tmp_path / "f", filter=str(weights), filter_threshold=threshold, filter_max_attempts=4))
    stats = result.filter
    assert 0 < stats["rejected"] < stats["attempts"] and 0 < stats["rejection_rate"] < 1
    manifest = pd.read_csv(tmp_path / "f" / "manifest.csv", dtype={"seed": "uint64"})
    assert manifest.groupby("emotion").size().to_dict() == {e: 9 for e in EKMAN}
    per_id = manifest.groupby("identity").first()
    per_id["score"] = manifest.groupby("identity")["score"].min()
    first_pass = worst >= threshold
    assert (per_id["attempt"].to_numpy()[first_pass] == 0).all()
    assert (per_id["attempt"].to_numpy()[~first_pass] > 0).any()
    for identity, row in per_id.iterrows():
        assert int(row["seed"]) == int(plan.seeds(np.array([identity]), int(row["attempt"]))[0])
    assert np.allclose(per_id["score"].to_numpy()[first_pass], worst[first_pass], atol=1e-5)
    card = json.loads((tmp_path / "f" / "dataset_card.json").read_text())
    assert card["filter"]["rejected"] == stats["rejected"]
    again = run_synth(_opts(tmp_path / "g", filter=str(weights), filter_threshold=threshold, filter_max_attempts=4))
    assert again.filter == stats
    assert hashes(tmp_path / "f") == hashes(tmp_path / "g")


def test_preview_grid(tmp_path):
    preview = tmp_path / "grid.png"
    result = run_synth(_opts(tmp_path / "p", n=3, emotions=("anger", "happiness"), preview=str(preview)))
    grid = cv2.imread(str(preview), cv2.IMREAD_UNCHANGED)
    assert result.preview == str(preview)
    assert grid.shape == (22 + 3 * (128 + 2), 2 * (128 + 2) - 2)
    faces = read_arrays(tmp_path / "p").images
    # The top-left cell is identity 0's anger face, magnified 2x.
    assert np.array_equal(grid[22:22 + 128:2, 0:128:2], faces[0])


def test_gan_path_end_to_end_records_weight_hashes(tmp_path, hashes):
    from fertk.core.io import sha256_file
    from fertk.models.stargan import StarGANGenerator, save_stargan
    from fertk.models.stylegan2 import build_stylegan2, save_stylegan2

    g_path, t_path = tmp_path / "g.safetensors", tmp_path / "t.safetensors"
    save_stylegan2(build_stylegan2(seed=1)[0], g_path)
    torch.manual_seed(2)
    save_stargan(StarGANGenerator(conv_dim=8, c_dim=7, repeat_num=1, image_size=16), t_path)
    opts = dict(n=3, shard_size=2, batch=2, generator="stylegan2", generator_weights=str(g_path),
                translator_weights=str(t_path), output_size=32)
    result = run_synth(SynthOptions(out=str(tmp_path / "gan"), **opts))
    assert result.complete and result.faces == 18
    card = json.loads((tmp_path / "gan" / "dataset_card.json").read_text())
    assert card["generator"]["sha256"] == sha256_file(g_path)
    assert card["translator"]["sha256"] == sha256_file(t_path)
    images = read_arrays(tmp_path / "gan").images
    assert images.shape == (18, 32, 32) and images.std() > 1
    run_synth(SynthOptions(out=str(tmp_path / "gan2"), **opts))
    assert hashes(tmp_path / "gan") == hashes(tmp_path / "gan2")
    # Other weights under the same name are other options.
    torch.manual_seed(9)
    save_stargan(StarGANGenerator(conv_dim=8, c_dim=7, repeat_num=1, image_size=16), t_path)
    with pytest.raises(OutputExistsError, match="--translator-weights"):
        run_synth(SynthOptions(out=str(tmp_path / "gan"), **opts))
