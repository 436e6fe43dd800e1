"""A constant-power estimate: watts x window time, always labelled ``estimate``.

Why it exists: some devices have no meter at all, and a suite may still want a
rough figure (for example the vendor's TDP). It is used only when the suite
asks for it, and every reading says method "estimate" and quality "estimate",
so a table can never show it as a measurement.
"""

import math
from dataclasses import dataclass
from typing import ClassVar, Optional

from .base import EnergyReading, Meter, MeterError, check_scope


@dataclass
class EstimateOptions:
    """Options of ``{type: estimate, watts: 350, scope: gpu-board}``.

    source: where the figure comes from (e.g. "H100 SXM TDP, datasheet"),
    carried into every reading.
    """

    watts: float
    scope: str = "gpu-board"
    source: Optional[str] = None
    name: Optional[str] = None

    def __post_init__(self):
        if not math.isfinite(self.watts) or self.watts < 0:
            raise MeterError(f"option 'watts' must be a finite number >= 0, got {self.watts!r}")
        check_scope(self.scope)


class EstimateMeter(Meter):
    """Constant watts times window duration; not a measurement."""

    type: ClassVar[str] = "estimate"
    Options: ClassVar[type] = EstimateOptions

    def __init__(self, options=None):
        super().__init__(options)
        self.name = self.options.name or "estimate"
        self.method = "estimate"
        self.scope = self.options.scope

    def end_window(self, name: str, at: Optional[float] = None) -> list[EnergyReading]:
        t0, t1 = self._close_window(name, at)
        o = self.options
        why = f"constant {o.watts:g} W x window time" + (f" ({o.source})" if o.source else "") + \
            ": an estimate, not a measurement"
        return [EnergyReading(meter=self.name, method="estimate", scope=self.scope,
                              joules=o.watts * (t1 - t0), duration_s=t1 - t0, n_updates=0,
                              update_period_s=None, quality="estimate", reason=why,
                              telemetry={"watts": o.watts, "source": o.source},
                              t_start=t0, t_end=t1)]

    def expected_period_s(self) -> Optional[float]:
        return None  # no updates: the "enough updates" rule does not apply
