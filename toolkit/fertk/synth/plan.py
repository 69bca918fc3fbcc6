"""The seed plan: which seed, latent and intensities every identity gets, and which shard holds it.

Everything here is integer arithmetic on uint64 (SplitMix64, Steele et al. 2014), so the plan is
the same on every platform, numpy version and worker count:

* identity seed:  ``seed(i, attempt) = splitmix64_output(stream(base, attempt), i)`` where
  ``splitmix64_output(s, k) = mix64(s + (k + 1) * 0x9E3779B97F4A7C15 mod 2^64)`` and
  ``stream(base, 0) = base``; attempts ≥ 1 (quality-filter regenerations) draw from reserved
  streams ``stream(base, a) = mix64(base XOR 0x5EED_F11E_0000_0000 + a * 0xD1B54A32D192ED03)``.
* draw k of an identity: ``splitmix64_output(identity_seed, k)`` (a uint64).
* uniform latents (procedural identity parameters): draw k for k < D, top 24 bits / 2^24, exact
  float32 in [0, 1).
* normal latents (StyleGAN2 z): Box–Muller on draws 2k and 2k+1 (53-bit uniforms) in float64,
  rounded to float32.
* intensity of (identity, emotion): draw 2^32 + index of the emotion in ALL_EMOTIONS, as a
  uniform in [low, high) — keyed by the emotion's name, so adding `--neutral` or dropping an
  emotion leaves every other face unchanged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fertk.core.emotions import ALL_EMOTIONS, parse_emotions
from fertk.core.errors import InvalidInputError

GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_RESERVED_TAG = 0x5EEDF11E00000000
_ATTEMPT_STEP = 0xD1B54A32D192ED03
INTENSITY_DRAW_OFFSET = 1 << 32
MASK64 = (1 << 64) - 1
SEED_SCHEME = "splitmix64-v1"


def mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on a uint64 array (wrapping arithmetic)."""
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def splitmix64_outputs(state: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Output number k (0-based) of SplitMix64 seeded with `state`, broadcast over both."""
    state = np.asarray(state, dtype=np.uint64)
    k = np.asarray(k, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return mix64(state + (k + np.uint64(1)) * GAMMA)


def stream_base(base_seed: int, attempt: int) -> int:
    """The SplitMix64 state whose outputs are the identity seeds of filter attempt `attempt`."""
    if attempt == 0:
        return base_seed & MASK64
    z = ((base_seed ^ _RESERVED_TAG) + attempt * _ATTEMPT_STEP) & MASK64
    return int(mix64(np.array([z], dtype=np.uint64))[0])


def identity_seeds(base_seed: int, identities: np.ndarray, attempt: int | np.ndarray = 0) -> np.ndarray:
    """uint64 seed of each identity index (per-identity attempt numbers allowed)."""
    identities = np.asarray(identities, dtype=np.uint64)
    attempts = np.broadcast_to(np.asarray(attempt, dtype=np.int64), identities.shape)
    states = np.empty(identities.shape, dtype=np.uint64)
    for a in np.unique(attempts):
        states[attempts == a] = np.uint64(stream_base(base_seed, int(a)))
    return splitmix64_outputs(states, identities)


def draws(seeds: np.ndarray, start: int, count: int) -> np.ndarray:
    """[len(seeds), count] uint64: draws start … start+count-1 of each identity's stream."""
    k = np.arange(start, start + count, dtype=np.uint64)
    return splitmix64_outputs(np.asarray(seeds, dtype=np.uint64)[:, None], k[None, :])


def uniform_float32(bits: np.ndarray) -> np.ndarray:
    """uint64 draws → float32 in [0, 1) from their top 24 bits (exactly representable)."""
    return (bits >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)


def latents_for(seeds: np.ndarray, dim: int, kind: str) -> np.ndarray:
    """[N, dim] float32 latents: "uniform" in [0, 1) or "normal" (Box–Muller), per the module doc."""
    if kind == "uniform":
        return uniform_float32(draws(seeds, 0, dim))
    if kind == "normal":
        bits = draws(seeds, 0, 2 * dim)
        u1 = ((bits[:, 0::2] >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53  # (0, 1]
        u2 = (bits[:, 1::2] >> np.uint64(11)).astype(np.float64) * 2.0**-53          # [0, 1)
        return (np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * math.pi * u2)).astype(np.float32)
    raise InvalidInputError(f"unknown latent kind {kind!r}", hint="expected 'uniform' or 'normal'")


def intensities_for(seeds: np.ndarray, emotions: tuple[str, ...], low: float, high: float) -> np.ndarray:
    """[N, E] float32 intensities in [low, high) (exactly `low` everywhere when low == high)."""
    n = len(seeds)
    if low == high:
        return np.full((n, len(emotions)), low, dtype=np.float32)
    out = np.empty((n, len(emotions)), dtype=np.float32)
    for col, emotion in enumerate(emotions):
        u = uniform_float32(draws(seeds, INTENSITY_DRAW_OFFSET + ALL_EMOTIONS.index(emotion), 1)[:, 0])
        out[:, col] = np.float32(low) + np.float32(high - low) * u
    return out


def parse_intensity(spec: str | float | tuple[float, float] | None) -> tuple[float, float]:
    """'0.5:1.0' → (0.5, 1.0); '1' or 1.0 → (1.0, 1.0); values in [0, 2]."""
    if spec is None:
        return (1.0, 1.0)
    if isinstance(spec, tuple):
        low, high = float(spec[0]), float(spec[1])
    elif isinstance(spec, (int, float)):
        low = high = float(spec)
    else:
        parts = str(spec).split(":")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise InvalidInputError(f"bad --intensity {spec!r}", hint="use LOW:HIGH, e.g. 0.5:1.0, or one value") from None
        if len(values) == 1:
            values = values * 2
        if len(values) != 2:
            raise InvalidInputError(f"bad --intensity {spec!r}", hint="use LOW:HIGH, e.g. 0.5:1.0, or one value")
        low, high = values
    if not (0.0 <= low <= high <= 2.0):
        raise InvalidInputError(f"--intensity {low}:{high} must satisfy 0 <= LOW <= HIGH <= 2")
    return (low, high)


@dataclass(frozen=True)
class Shard:
    """One shard: its index and the identity range [start, stop) it holds."""

    index: int
    start: int
    stop: int

    @property
    def identities(self) -> int:
        """Number of identities in the shard."""
        return self.stop - self.start


@dataclass(frozen=True)
class SeedPlan:
    """n identities × emotions, cut into shards of `shard_size` identities; seeds per the module doc."""

    n: int
    seed: int
    emotions: tuple[str, ...]
    shard_size: int
    intensity: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise InvalidInputError(f"--n must be at least 1, got {self.n}")
        if not 0 <= self.seed <= MASK64:
            raise InvalidInputError(f"--seed must be in [0, 2^64), got {self.seed}")
        if self.shard_size < 1:
            raise InvalidInputError(f"--shard-size must be at least 1, got {self.shard_size}")
        object.__setattr__(self, "emotions", parse_emotions(self.emotions))
        object.__setattr__(self, "intensity", parse_intensity(tuple(self.intensity)))

    @property
    def num_shards(self) -> int:
        """ceil(n / shard_size)."""
        return -(-self.n // self.shard_size)

    @property
    def faces(self) -> int:
        """n × number of emotions."""
        return self.n * len(self.emotions)

    def shard(self, index: int) -> Shard:
        """The identity range of shard `index`."""
        if not 0 <= index < self.num_shards:
            raise InvalidInputError(f"shard {index} out of range (0..{self.num_shards - 1})")
        start = index * self.shard_size
        return Shard(index, start, min(start + self.shard_size, self.n))

    def shards_for_rank(self, rank: int, world_size: int) -> list[Shard]:
        """Disjoint round-robin share of the shards for one worker."""
        return [self.shard(i) for i in range(rank, self.num_shards, world_size)]

    def seeds(self, identities: np.ndarray, attempt: int | np.ndarray = 0) -> np.ndarray:
        """uint64 seeds of these identity indices."""
        return identity_seeds(self.seed, identities, attempt)

    def inputs(self, identities: np.ndarray, latent_dim: int, latent_kind: str,
               attempt: int | np.ndarray = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(seeds uint64 [N], latent float32 [N, D], intensity float32 [N, E]) for these identities."""
        seeds = self.seeds(identities, attempt)
        latent = latents_for(seeds, latent_dim, latent_kind)
        intensity = intensities_for(seeds, self.emotions, *self.intensity)
        return seeds, latent, intensity

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (with the seed scheme's name)."""
        data = asdict(self)
        data["emotions"] = list(self.emotions)
        data["intensity"] = list(self.intensity)
        data["seed_scheme"] = SEED_SCHEME
        return data
