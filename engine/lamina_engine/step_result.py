"""StepResult: what one Engine.step() did, for the offline loop, the servers and KV export."""

from __future__ import annotations

from dataclasses import dataclass, field

from lamina_engine.core.output import SchedulerOutput
from lamina_engine.kv_export import PromptKV
from lamina_engine.request_output import RequestOutput


@dataclass
class LayerGroupRun:
    """The layered cohort's group just run: layers [layer_start, layer_end) now hold the KV of
    `prompts` (request id -> its prompt KV), the members whose whole prompt is in the cohort."""

    group: int  # g in [0, num_groups)
    num_groups: int  # G
    layer_start: int
    layer_end: int
    prompts: dict[str, PromptKV]

    @property
    def is_last(self) -> bool:
        return self.group == self.num_groups - 1


@dataclass
class StepResult:
    """`outputs`: the requests that changed (a new token, or finished), cumulative outputs the
    engine keeps updating; `schedule`: what ran (None when nothing could); `errors`: request
    id -> why, the requests this step failed (their outputs are finished with reason "error")."""

    outputs: list[RequestOutput] = field(default_factory=list)
    schedule: SchedulerOutput | None = None
    layer_group: LayerGroupRun | None = None
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def finished(self) -> list[RequestOutput]:
        return [out for out in self.outputs if out.finished]

    @property
    def ran(self) -> bool:
        return self.schedule is not None
