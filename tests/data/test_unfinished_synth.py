"""An unfinished `fertk synth` directory is refused by `load_arrays`, whatever its format (issue #12).

A synth directory is one with ``.fertk/options.json`` (written first); it is finished once every
shard has its record, manifest.csv is merged and dataset_card.json (written last) exists. Before
the fix an unfinished ``--format folder`` directory without a card was read by ``--layout auto``
as a plain ImageFolder: partial data, every image its own subject.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fertk.core.errors import DatasetError
from fertk.data.datasets import load_arrays
from fertk.data.layouts import detect_layout
from fertk.data.shards import FORMATS, DatasetLayout, is_synth_dataset
from fertk.synth import SynthOptions, run_synth

N, SHARD_SIZE = 5, 2    # shards of 2, 2 and 1 identities


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small finished dataset per format (copied by each test before it is damaged)."""
    root = tmp_path_factory.mktemp("synth")
    out = {}
    for fmt in FORMATS:
        run_synth(SynthOptions(out=str(root / fmt), n=N, shard_size=SHARD_SIZE, batch=2, format=fmt))
        out[fmt] = root / fmt
    return out


def _copy(src: Path, dst: Path) -> DatasetLayout:
    shutil.copytree(src, dst)
    return DatasetLayout(dst, src.name)


def _killed_after_merge(layout: DatasetLayout) -> None:
    """Every shard done and the manifest merged, but the card (written last) never came."""
    layout.card_path.unlink()


def _killed_mid_run(layout: DatasetLayout) -> None:
    """A run killed while shard 1 was being written: no record for it, no manifest, no card."""
    layout.record_path(1).unlink()
    layout.manifest_path.unlink()
    layout.card_path.unlink()


def _record_lost_card_kept(layout: DatasetLayout) -> None:
    """What a resume that was killed leaves behind a card of the earlier, finished run."""
    layout.record_path(2).unlink()
    layout.manifest_path.unlink()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("damage", [_killed_after_merge, _killed_mid_run, _record_lost_card_kept],
                         ids=["no-card", "mid-run", "card-but-shard-missing"])
def test_unfinished_synth_dir_is_refused(tmp_path: Path, finished: dict[str, Path], fmt: str, damage) -> None:
    layout = _copy(finished[fmt], tmp_path / fmt)
    damage(layout)
    assert is_synth_dataset(layout.root)
    assert detect_layout(layout.root) == "synth"
    for layout_name in ("auto", "synth", "folder"):
        with pytest.raises(DatasetError, match="unfinished `fertk synth` dataset") as info:
            load_arrays(layout.root, layout=layout_name, cache_dir=tmp_path / "cache")
        assert str(layout.root) in str(info.value)
        assert "finish it: rerun the same `fertk synth` command (it resumes)" in (info.value.hint or "")


@pytest.mark.parametrize("fmt", FORMATS)
def test_finished_synth_dir_reads_through_the_shard_reader(finished: dict[str, Path], fmt: str) -> None:
    arrays = load_arrays(finished[fmt])
    assert len(arrays) == N * 6
    # One subject per identity (the synth reader), not one per image (an ImageFolder read).
    assert sorted(set(arrays.subjects.tolist())) == [f"synth-{i}" for i in range(N)]
    assert arrays.meta["format"] == fmt
