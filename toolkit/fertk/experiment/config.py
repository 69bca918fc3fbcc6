"""The experiment config: one TOML file recording every knob of the paper's three experiments.

    [experiment]   name, out, seed, repeats, k, classes, experiments
    [split]        sizes (subject counts like the paper's 109/10/25, or fractions), seed
    [[real]]       the real training database(s): name, path, layout, strict, [options] for the
                   reader, [preprocess] for face cropping, [generate] to make a stand-in with fertk synth
    [[synthetic]]  synthetic set(s) (a `fertk synth` output dir): name, path, shuffle_labels, [generate]
    [[cross_db]]   cross-database test sets: name, path, layout, [options], [preprocess], [generate]
    [train]        FER CNN training options (variant, input_size, epochs, batch_size, lr, patience, ...)

Relative paths are relative to the config file. Unknown keys are errors (a typo must not silently
fall back to a default). `ExperimentConfig.to_dict()` is the resolved config a run directory keeps.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from fertk.core.emotions import EKMAN, parse_emotions
from fertk.core.errors import InvalidInputError
from fertk.data.splits import PAPER_SIZES
from fertk.models.procedural import ProceduralConfig
from fertk.synth import SynthOptions
from fertk.train.fer_config import FerTrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_K: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 10, 15, 20)
EXPERIMENTS: tuple[str, ...] = ("real", "synthetic", "mix")  # the paper's Exp 1, 2 and 3
# Training options the runner sets itself: seeds come from [experiment] seed and the repeat,
# classes from [experiment] classes, threads from --jobs / --threads.
_RUNNER_TRAIN_KEYS = ("seed", "classes", "threads")
# Test-set names every cell uses; a cross-database set may not take them.
RESERVED_TEST_NAMES = ("test", "test_real")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class DatasetSpec:
    """One dataset: where it is, how to read it, and (optionally) how to make it with fertk synth."""

    name: str
    path: str
    layout: str = "auto"                                         # reader layout (see fertk.data.layouts)
    options: dict[str, Any] = field(default_factory=dict)        # reader options (peak_frames, keep, ...)
    preprocess: dict[str, Any] = field(default_factory=dict)     # PreprocessConfig fields (size = input_size)
    strict: bool = False                                         # unreadable image = error, not skipped
    generate: dict[str, Any] | None = None                       # SynthOptions fields; made when missing
    shuffle_labels: bool = False                                 # synthetic sets only: the control

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)


@dataclass
class ExperimentConfig:
    """Everything a run depends on (JSON-able); `source` is the TOML file it was read from."""

    name: str
    real: list[DatasetSpec]
    synthetic: list[DatasetSpec]
    cross_db: list[DatasetSpec] = field(default_factory=list)
    split_sizes: tuple[float, ...] = PAPER_SIZES
    split_seed: int = 0                    # repeat r splits the real data with split_seed + r
    seed: int = 0                          # base of the synthetic-sampling, shuffle and init seeds
    repeats: int = 1
    k: tuple[int, ...] = DEFAULT_K
    classes: tuple[str, ...] = EKMAN
    experiments: tuple[str, ...] = EXPERIMENTS
    train: dict[str, Any] = field(default_factory=dict)  # FerTrainConfig fields (minus seed/classes/threads)
    out: str | None = None                 # default run directory
    source: str | None = None

    def __post_init__(self) -> None:
        self.split_sizes = tuple(float(s) if not float(s).is_integer() else int(s) for s in self.split_sizes)
        self.k = tuple(int(k) for k in self.k)
        self.classes = tuple(parse_emotions(self.classes))
        self.experiments = tuple(self.experiments)
        self.validate()

    def validate(self) -> None:
        """Raise InvalidInputError for any inconsistent setting."""
        where = f" in {self.source}" if self.source else ""
        if not _NAME.match(self.name):
            raise InvalidInputError(f"experiment name {self.name!r}{where} must be letters, digits, '.', '_' or '-'")
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 1:
            raise InvalidInputError(f"repeats must be a positive integer{where}, got {self.repeats!r}")
        if not self.k or any(k < 1 for k in self.k) or len(set(self.k)) != len(self.k):
            raise InvalidInputError(f"k must list distinct positive integers{where}, got {list(self.k)}")
        unknown = [e for e in self.experiments if e not in EXPERIMENTS]
        if unknown or not self.experiments:
            raise InvalidInputError(f"unknown experiment(s) {unknown or '[]'}{where}",
                                    hint="choose from " + ", ".join(EXPERIMENTS) + " (Exp 1, 2, 3)")
        if len(self.split_sizes) != 3:
            raise InvalidInputError(f"[split] sizes needs three values (train, val, test){where}, "
                                    f"got {list(self.split_sizes)}", hint="e.g. sizes = [109, 10, 25]")
        if not self.real:
            raise InvalidInputError(f"no [[real]] dataset{where}: the real split sizes define a synthetic unit")
        if ("synthetic" in self.experiments or "mix" in self.experiments) and not self.synthetic:
            raise InvalidInputError(f"experiments {list(self.experiments)} need a [[synthetic]] set{where}")
        if len(self.classes) < 2:
            raise InvalidInputError(f"a classifier needs at least two classes{where}")
        for group, specs in (("real", self.real), ("synthetic", self.synthetic), ("cross_db", self.cross_db)):
            names = [s.name for s in specs]
            for name in names:
                if not _NAME.match(name):
                    raise InvalidInputError(f"[[{group}]] name {name!r}{where} must be letters, digits, '.', '_' or '-'")
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise InvalidInputError(f"[[{group}]] name {twice[0]!r} is used twice{where}")
            for spec in specs:
                if spec.shuffle_labels and group != "synthetic":
                    raise InvalidInputError(f"shuffle_labels applies to [[synthetic]] sets only ({group} {spec.name!r})")
                if spec.generate is not None:
                    _check_generate(spec, group)
        for spec in self.cross_db:
            if spec.name in RESERVED_TEST_NAMES:
                raise InvalidInputError(f"cross-database set name {spec.name!r} is reserved{where}",
                                        hint="rename it (the in-database test sets are called test, test_real)")
        bad = [k for k in _RUNNER_TRAIN_KEYS if k in self.train]
        if bad:
            raise InvalidInputError(f"[train] {bad[0]} is set by the experiment runner{where}",
                                    hint="use [experiment] seed / classes, or --threads")
        self.train_config(seed=0)  # validates the [train] table

    def train_config(self, seed: int, threads: int | None = None) -> Any:
        """The FerTrainConfig of one cell (the [train] table + runner-set seed, classes, threads)."""
        try:
            return FerTrainConfig.from_dict({**self.train, "seed": int(seed), "classes": list(self.classes),
                                             "threads": threads})
        except TypeError as exc:
            raise InvalidInputError(f"bad [train] table: {exc}") from None

    @property
    def input_size(self) -> int:
        """Side of the faces the CNN sees (every dataset is resized to it)."""
        return int(self.train_config(seed=0).input_size)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (the resolved config)."""
        data = asdict(self)
        for key in ("split_sizes", "k", "classes", "experiments"):
            data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ExperimentConfig":
        """Inverse of to_dict."""
        values = dict(data)
        for group in ("real", "synthetic", "cross_db"):
            values[group] = [DatasetSpec(**spec) for spec in values.get(group, [])]
        return cls(**values)

    def with_overrides(self, *, repeats: int | None = None, k: Sequence[int] | None = None) -> "ExperimentConfig":
        """A copy with the command line's --repeats / --k applied."""
        changes: dict[str, Any] = {}
        if repeats is not None:
            changes["repeats"] = repeats
        if k is not None:
            changes["k"] = tuple(k)
        return replace(self, **changes) if changes else self


def units_needed(config: ExperimentConfig) -> int:
    """Synthetic units one repeat draws: max k for Exp 3, else 1 for Exp 2, else 0."""
    if "mix" in config.experiments:
        return max(config.k)
    return 1 if "synthetic" in config.experiments else 0


def _check_generate(spec: DatasetSpec, group: str) -> None:
    table = dict(spec.generate or {})
    if "out" in table:
        raise InvalidInputError(f"[{group}.generate] of {spec.name!r} must not set out: the dataset path is the output")
    if "n" not in table and group != "synthetic":
        raise InvalidInputError(f"[{group}.generate] of {spec.name!r} needs n (identities)")
    known = {f.name for f in fields(SynthOptions)} - {"out"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise InvalidInputError(f"unknown fertk synth option(s) {', '.join(unknown)} in [{group}.generate] of {spec.name!r}",
                                hint="known: " + ", ".join(sorted(known)))
    options = SynthOptions(out=spec.path, **{"n": 1, **table})  # raises on bad values
    options.pipeline_config()  # crop box, output size, generator
    if options.generator == "procedural":
        ProceduralConfig(style=options.style)


# -- reading TOML -----------------------------------------------------------------------------------
_SECTIONS = ("experiment", "split", "real", "synthetic", "cross_db", "train")
_EXPERIMENT_KEYS = ("name", "out", "seed", "repeats", "k", "classes", "experiments")
_SPLIT_KEYS = ("sizes", "seed")


def _reject_unknown(table: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise InvalidInputError(f"unknown key(s) {', '.join(unknown)} in {where}", hint="known: " + ", ".join(known))


def _dataset_specs(value: Any, group: str, base: Path, source: str) -> list[DatasetSpec]:
    tables = [value] if isinstance(value, Mapping) else list(value or [])
    known = [f.name for f in fields(DatasetSpec)]
    specs = []
    for i, table in enumerate(tables):
        if not isinstance(table, Mapping):
            raise InvalidInputError(f"[[{group}]] entry {i + 1} in {source} is not a table")
        _reject_unknown(table, known, f"[[{group}]] of {source}")
        if "path" not in table:
            raise InvalidInputError(f"[[{group}]] entry {i + 1} in {source} has no path")
        path = Path(str(table["path"])).expanduser()
        path = path if path.is_absolute() else (base / path)
        name = str(table.get("name") or path.name)
        for key in ("options", "preprocess"):
            if not isinstance(table.get(key, {}), Mapping):
                raise InvalidInputError(f"[{group}.{key}] of {name!r} in {source} must be a table")
        specs.append(DatasetSpec(
            name=name, path=str(path.resolve()), layout=str(table.get("layout", "auto")),
            options=dict(table.get("options", {})), preprocess=dict(table.get("preprocess", {})),
            strict=bool(table.get("strict", False)),
            generate=dict(table["generate"]) if table.get("generate") is not None else None,
            shuffle_labels=bool(table.get("shuffle_labels", False)),
        ))
    return specs


def config_from_toml_text(text: str, base_dir: str | Path = ".", source: str | None = None) -> ExperimentConfig:
    """Parse TOML text into an ExperimentConfig; relative paths resolve against `base_dir`."""
    where = source or "the config"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInputError(f"{where} is not valid TOML: {exc}") from None
    _reject_unknown(data, _SECTIONS, where)
    base = Path(base_dir).expanduser().resolve()
    exp = dict(data.get("experiment", {}))
    _reject_unknown(exp, _EXPERIMENT_KEYS, f"[experiment] of {where}")
    split = dict(data.get("split", {}))
    _reject_unknown(split, _SPLIT_KEYS, f"[split] of {where}")
    out = exp.get("out")
    if out is not None:
        out_path = Path(str(out)).expanduser()
        out = str(out_path if out_path.is_absolute() else (base / out_path).resolve())
    name = str(exp.get("name") or (Path(source).stem if source else "experiment"))
    return ExperimentConfig(
        name=name,
        real=_dataset_specs(data.get("real"), "real", base, where),
        synthetic=_dataset_specs(data.get("synthetic"), "synthetic", base, where),
        cross_db=_dataset_specs(data.get("cross_db"), "cross_db", base, where),
        split_sizes=tuple(split.get("sizes", PAPER_SIZES)),
        split_seed=int(split.get("seed", 0)),
        seed=int(exp.get("seed", 0)),
        repeats=exp.get("repeats", 1),
        k=tuple(exp.get("k", DEFAULT_K)),
        classes=tuple(exp.get("classes", EKMAN)),
        experiments=tuple(exp.get("experiments", EXPERIMENTS)),
        train=dict(data.get("train", {})),
        out=out,
        source=source,
    )


def load_config(path: str | Path) -> ExperimentConfig:
    """Read an experiment TOML file (relative paths in it are relative to the file)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InvalidInputError(f"experiment config not found: {path}",
                                hint="write one, or make the procedural stand-in: fertk experiment init --procedural DIR")
    return config_from_toml_text(path.read_text(encoding="utf-8"), base_dir=path.parent, source=str(path))


def parse_k_list(text: str) -> tuple[int, ...]:
    """'1,2,5' -> (1, 2, 5)."""
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise InvalidInputError(f"bad k list {text!r}", hint="comma-separated positive integers, e.g. 1,2,5") from None
    if not values:
        raise InvalidInputError("empty k list", hint="e.g. --k 1,2,5")
    return values


__all__ = ["DEFAULT_K", "EXPERIMENTS", "DatasetSpec", "ExperimentConfig", "config_from_toml_text", "load_config",
           "parse_k_list"]
