"""Dataset readers, preprocessing, subject-disjoint splits and the shard writer/reader."""

from fertk.data.records import FaceRecord

__all__ = ["FaceRecord"]
