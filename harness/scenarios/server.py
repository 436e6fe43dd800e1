"""server: an open loop, Poisson arrivals at `rate` requests/s (exponential
inter-arrival times from a seeded generator). A list of `rates` is a sweep: one cell
per rate, each measured on the same requests."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
import math
from typing import Literal, Optional

import numpy as np

from backends.base import Request
from harness.scenarios.base import ScenarioPoint
from harness.scenarios.loadgen import poisson_schedule
from harness.scenarios.request_scenario import Pass, RequestConfig, RequestScenario


@dataclass
class ServerConfig(RequestConfig):
    type: Literal["server"] = "server"
    rates: list[float] = field(default_factory=list)  # requests/s, one measurement per rate
    duration_s: Optional[float] = None  # stop issuing after this long (whichever of requests/duration first)
    cooldown_s: float = 0.0  # pause between the rates of a sweep run in one go

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if not self.rates:
            out.append(("rates", "the server scenario needs a list of rates (requests/s), e.g. [1, 2, 4]"))
        for i, r in enumerate(self.rates):
            if not (isinstance(r, (int, float)) and r > 0 and math.isfinite(r)):
                out.append((f"rates[{i}]", f"expected a rate > 0 requests/s, got {r!r}"))
        if self.duration_s is not None and self.duration_s <= 0:
            out.append(("duration_s", f"expected > 0 seconds, got {self.duration_s}"))
        if self.cooldown_s < 0:
            out.append(("cooldown_s", f"expected >= 0 seconds, got {self.cooldown_s}"))
        return out


class ServerScenario(RequestScenario):
    name = "server"
    Config = ServerConfig

    def points(self) -> list[ScenarioPoint]:
        return [ScenarioPoint(f"server@{r:g}", float(r)) for r in self.config.rates]

    @property
    def cooldown_s(self) -> float:
        return self.config.cooldown_s

    def config_json(self, rate: float | None) -> dict:
        return asdict(self.config if rate is None else replace(self.config, rates=[float(rate)]))

    def passes(self, requests: list[Request], *, seed: int, batch: int, rate: float | None) -> list[Pass]:
        out = []
        for r in (self.config.rates if rate is None else [rate]):
            schedule = poisson_schedule(r, len(requests), seed)
            reqs = requests
            if self.config.duration_s is not None:
                keep = max(1, int(np.searchsorted(schedule, self.config.duration_s, side="right")))
                reqs, schedule = requests[:keep], schedule[:keep]
            offered = len(schedule) / schedule[-1] if len(schedule) and schedule[-1] > 0 else None
            out.append(Pass(reqs, in_flight=self.config.max_in_flight, schedule=schedule, rate=r,
                            offered_rate=offered))
        return out
