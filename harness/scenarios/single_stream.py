"""single-stream: one request at a time, the next issued when the last ends (the
latency of one user on an otherwise idle system)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from backends.base import Request
from harness.scenarios.request_scenario import Pass, RequestConfig, RequestScenario


@dataclass
class SingleStreamConfig(RequestConfig):
    type: Literal["single-stream"] = "single-stream"


class SingleStreamScenario(RequestScenario):
    name = "single-stream"
    Config = SingleStreamConfig

    def passes(self, requests: list[Request], *, seed: int, batch: int, rate: float | None) -> list[Pass]:
        return [Pass(requests, in_flight=1)]
