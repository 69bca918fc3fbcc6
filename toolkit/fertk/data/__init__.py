"""Dataset readers, preprocessing, subject-disjoint splits and the shard writer/reader."""

from fertk.data.records import FaceArrays, FaceRecord

__all__ = ["FaceArrays", "FaceRecord"]
