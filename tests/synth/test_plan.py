"""The seed plan: SplitMix64 reference values, a pure-Python twin of the documented formulas, shards."""

from __future__ import annotations

import numpy as np
import pytest

from fertk.core.emotions import ALL_EMOTIONS, EKMAN
from fertk.core.errors import InvalidInputError
from fertk.synth.plan import (
    INTENSITY_DRAW_OFFSET, SeedPlan, identity_seeds, latents_for, parse_intensity, splitmix64_outputs,
    stream_base,
)

M = (1 << 64) - 1


def _mix(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
    return z ^ (z >> 31)


def _output(state: int, k: int) -> int:
    return _mix((state + (k + 1) * 0x9E3779B97F4A7C15) & M)


def test_splitmix64_reference_vector():
    # The first outputs of SplitMix64 seeded with 1234567 (Vigna's reference implementation).
    got = splitmix64_outputs(np.uint64(1234567), np.arange(3)).tolist()
    assert got == [6457827717110365317, 3203168211198807973, 9817491932198370423]


def test_identity_seeds_and_draws_follow_the_documented_formula():
    base = 2**63 + 12345
    ids = np.array([0, 1, 7, 10**9])
    seeds = identity_seeds(base, ids)
    assert seeds.tolist() == [_output(base, int(i)) for i in ids]
    latent = latents_for(seeds, 5, "uniform")
    for row, seed in enumerate(seeds.tolist()):
        assert latent[row].tolist() == [(_output(seed, k) >> 40) / 2**24 for k in range(5)]
    # Filter attempts draw from reserved streams, one per attempt.
    retry = identity_seeds(base, ids, attempt=2)
    assert retry.tolist() == [_output(stream_base(base, 2), int(i)) for i in ids]
    assert not set(retry.tolist()) & set(seeds.tolist())
    assert not set(retry.tolist()) & set(identity_seeds(base, ids, attempt=1).tolist())


def test_latent_distributions():
    seeds = identity_seeds(0, np.arange(4000))
    uniform = latents_for(seeds, 8, "uniform")
    assert uniform.dtype == np.float32 and uniform.min() >= 0.0 and uniform.max() < 1.0
    assert abs(float(uniform.mean()) - 0.5) < 0.01
    normal = latents_for(seeds, 8, "normal")
    assert abs(float(normal.mean())) < 0.03 and abs(float(normal.std()) - 1.0) < 0.03
    with pytest.raises(InvalidInputError):
        latents_for(seeds, 2, "cauchy")


def test_intensities_are_keyed_by_emotion_name():
    six = SeedPlan(10, 3, EKMAN, 4, (0.2, 0.9))
    seven = SeedPlan(10, 3, ("happiness",) + EKMAN + ("neutral",), 4, (0.2, 0.9))
    ids = np.arange(10)
    _, _, a = six.inputs(ids, 4, "uniform")
    _, _, b = seven.inputs(ids, 4, "uniform")
    assert seven.emotions == ("happiness", "anger", "disgust", "fear", "sadness", "surprise", "neutral")
    assert np.array_equal(a, b[:, [seven.emotions.index(e) for e in EKMAN]])
    assert a.min() >= 0.2 and a.max() < 0.9
    seed = int(six.seeds(ids[:1])[0])
    k = INTENSITY_DRAW_OFFSET + ALL_EMOTIONS.index("fear")
    assert a[0, EKMAN.index("fear")] == np.float32(0.2) + np.float32(0.7) * np.float32((_output(seed, k) >> 40) / 2**24)
    _, _, fixed = SeedPlan(3, 0, EKMAN, 2).inputs(np.arange(3), 4, "uniform")
    assert (fixed == 1.0).all()


def test_shards_partition_identities_and_ranks():
    plan = SeedPlan(10, 0, EKMAN, 4)
    assert plan.num_shards == 3 and plan.faces == 60
    assert [(s.start, s.stop) for s in map(plan.shard, range(3))] == [(0, 4), (4, 8), (8, 10)]
    ranks = [plan.shards_for_rank(r, 2) for r in range(2)]
    assert [s.index for s in ranks[0]] == [0, 2] and [s.index for s in ranks[1]] == [1]
    assert plan.to_dict()["seed_scheme"] == "splitmix64-v1"


def test_plan_and_intensity_validation():
    assert parse_intensity("0.5:1") == (0.5, 1.0)
    assert parse_intensity("0.8") == (0.8, 0.8)
    for bad in ("1:0.5", "a:b", "0:1:2", "-1:1", "0:3"):
        with pytest.raises(InvalidInputError):
            parse_intensity(bad)
    with pytest.raises(InvalidInputError):
        SeedPlan(0, 0, EKMAN, 10)
    with pytest.raises(InvalidInputError):
        SeedPlan(10, -1, EKMAN, 10)
    with pytest.raises(InvalidInputError):
        SeedPlan(10, 0, ("anger", "bored"), 10)
