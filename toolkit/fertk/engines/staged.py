"""An engine made of engines run one after the other: each stage's outputs feed the next stage's
inputs by name, alongside the outer inputs. Lets one graph run its parts on different backends
or precisions (the GAN pipeline: StyleGAN2 on onnxruntime fp32, StarGAN on torch in bf16)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fertk.core.errors import InvalidInputError
from fertk.core.specs import TensorSpec
from fertk.engines.base import Engine


class StagedEngine(Engine):
    """Stages [(name, engine)] chained by tensor name; the last stage's outputs are the result."""

    backend = "staged"

    def __init__(self, stages: Sequence[tuple[str, Engine]], input_specs: Sequence[TensorSpec],
                 output_specs: Sequence[TensorSpec]) -> None:
        super().__init__(input_specs, output_specs)
        if not stages:
            raise InvalidInputError("a staged engine needs at least one stage")
        self.stages = list(stages)
        known = {s.name for s in self.input_specs}
        for name, engine in self.stages:
            missing = [s.name for s in engine.input_specs if s.name not in known]
            if missing:
                raise InvalidInputError(f"stage {name!r} needs {', '.join(missing)}, which no earlier stage "
                                        "or outer input provides")
            known |= {s.name for s in engine.output_specs}
        last = {s.name for s in self.stages[-1][1].output_specs}
        absent = [s.name for s in self.output_specs if s.name not in last]
        if absent:
            raise InvalidInputError(f"the last stage does not produce {', '.join(absent)}")
        # Reports name every stage's backend, in order (e.g. ort+torch).
        self.backend = "+".join(engine.backend for _, engine in self.stages)

    def _run_impl(self, inputs: dict[str, Any], as_torch: bool) -> dict[str, Any]:
        values: dict[str, Any] = dict(inputs)
        for _, engine in self.stages:
            values.update(engine.run({s.name: values[s.name] for s in engine.input_specs}))
        return {s.name: values[s.name] for s in self.output_specs}

    def _close_impl(self) -> None:
        for _, engine in self.stages:
            engine.close()

    def _describe_impl(self) -> dict[str, Any]:
        stages = [{"stage": name, **engine.describe()} for name, engine in self.stages]
        devices = list(dict.fromkeys(str(s.get("device", "?")) for s in stages))
        return {"device": "+".join(devices), "stages": stages}
