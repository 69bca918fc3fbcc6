"""Synthetic-dataset storage: shard writers and readers for three formats, the manifest, the
per-shard records that mark a shard finished, verification, and `read_arrays` for training.

Layout of a dataset directory (every format):

    .fertk/options.json          what the dataset is (options + seed plan) and the execution
                                 choices that decide its bytes; written first (created exclusively)
    .fertk/records/shard-NNNNNN.json   written last, by rename: its presence means "shard done";
                                 it holds the size and sha256 of every file of the shard and
                                 the execution choices it was made under
    .fertk/manifest/shard-NNNNNN.csv   the shard's manifest rows (no header)
    manifest.csv                 all rows in shard order, merged once every shard is done
    dataset_card.json            models, hashes, engine, versions, counts, timing; written last

and per format:

    wds     shards/shard-NNNNNN.tar         WebDataset: <key>.png, <key>.cls, <key>.json
    npy     shards/shard-NNNNNN.images.npy  uint8 [faces, H, W]  (np.load(mmap_mode="r"))
            shards/shard-NNNNNN.labels.npy  int64 [faces]
    folder  images/<emotion>/<identity>.png an ImageFolder root (torchvision / Keras)

A directory with .fertk/options.json is a synth dataset (`is_synth_dataset`); it is finished once
every shard is done, manifest.csv is merged and the card is there (`unfinished_reason`). The
manifest is CSV (always, so the same options give the same bytes on every machine) with columns
MANIFEST_COLUMNS; `pandas.read_csv(DIR / "manifest.csv")` reads it.

Modules: `layout` (paths, bookkeeping JSON), `png` (codec), `writers` (one per format),
`manifest` (rows, done-markers, merge, leftovers, the finished rule), `reading`, `verify`.
"""

from fertk.data.shards.layout import (
    CARD_FILE, FORMATS, MANIFEST_FILE, META_DIR, OPTIONS_FILE, DatasetLayout, create_json_exclusive, is_synth_dataset,
    layout_of, options_fingerprint, read_json, read_options, sample_key, shard_name, write_bytes_atomic, write_error,
    write_json_atomic,
)
from fertk.data.shards.manifest import (
    FINISH_HINT, MANIFEST_COLUMNS, ShardRows, check_finished, manifest_lines, merge_manifest, read_manifest_part,
    remove_shard, remove_stale_dataset_temps, remove_stale_temps, shard_done, unfinished_reason, unfinished_shards,
)
from fertk.data.shards.png import PNG_COMPRESSION, decode_png, encode_png
from fertk.data.shards.reading import SOURCE_NAME, iter_shard_arrays, iter_tar, read_arrays
from fertk.data.shards.verify import VerifyReport, describe_execution, verify_dataset
from fertk.data.shards.writers import (
    FolderShardWriter, NpyShardWriter, ShardResult, ShardWriter, WdsShardWriter, open_shard_writer,
)

__all__ = [
    "CARD_FILE", "FINISH_HINT", "FORMATS", "MANIFEST_COLUMNS", "MANIFEST_FILE", "META_DIR", "OPTIONS_FILE",
    "PNG_COMPRESSION", "SOURCE_NAME", "DatasetLayout", "FolderShardWriter", "NpyShardWriter", "ShardResult",
    "ShardRows", "ShardWriter", "VerifyReport", "WdsShardWriter", "check_finished", "create_json_exclusive",
    "decode_png", "describe_execution", "encode_png", "is_synth_dataset", "iter_shard_arrays", "iter_tar",
    "layout_of", "manifest_lines", "merge_manifest", "open_shard_writer", "options_fingerprint", "read_arrays",
    "read_json", "read_manifest_part", "read_options", "remove_shard", "remove_stale_dataset_temps",
    "remove_stale_temps", "sample_key", "shard_done", "shard_name", "unfinished_reason", "unfinished_shards",
    "verify_dataset", "write_bytes_atomic", "write_error", "write_json_atomic",
]
