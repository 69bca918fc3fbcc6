"""Synthetic FER datasets: seed plan → fused generation graph on an engine → shards on disk."""

from fertk.core.progress import ProgressEvent
from fertk.data.shards import VerifyReport, read_arrays, verify_dataset
from fertk.synth.options import SynthOptions, SynthResult
from fertk.synth.plan import SeedPlan
from fertk.synth.run import run_synth

__all__ = ["ProgressEvent", "SeedPlan", "SynthOptions", "SynthResult", "VerifyReport", "read_arrays",
           "run_synth", "verify_dataset"]
