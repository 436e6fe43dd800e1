"""concurrency: a closed loop holding a fixed number of requests in flight (N users
each sending the next request as soon as the last one ends)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from backends.base import Request
from harness.scenarios.request_scenario import Pass, RequestConfig, RequestScenario


@dataclass
class ConcurrencyConfig(RequestConfig):
    type: Literal["concurrency"] = "concurrency"
    concurrency: Optional[int] = None  # requests in flight (default: the cell's batch)

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if self.concurrency is not None and self.concurrency < 1:
            out.append(("concurrency", f"expected at least 1, got {self.concurrency}"))
        return out


class ConcurrencyScenario(RequestScenario):
    name = "concurrency"
    Config = ConcurrencyConfig

    def passes(self, requests: list[Request], *, seed: int, batch: int, rate: float | None) -> list[Pass]:
        n = self.config.concurrency or batch or 1
        return [Pass(requests, in_flight=n, concurrency=n)]
