"""Prices files and cost per million generated tokens.

Cost per million generated tokens (documented in the report's Methods section too):

    T      = batch x gen_len / median request time         generated tokens/s while busy
    u      = utilisation                                    share of the lifetime spent busy
    hardware = price / (lifetime_years x 31 557 600 s x u x T) x 1e6
    energy   = (1e6 / tokens_per_joule  +  idle_W x (1e6 / T) x (1 - u) / u) x pue / 3.6e6 kWh
               x electricity_per_kwh
    total    = hardware + energy       (only when both are known: a cost without its energy
                                         share is shown as incomplete, "USD 0.575 + energy
                                         unknown", never as a total that understates it)

tokens_per_joule is the gross figure of the cell's primary meter (board, package or
wall, as labelled); idle_W is that meter's idle baseline (left out, and said so, when
unknown). An estimate stays labelled "estimate" in the cost column as everywhere else.

The file is checked by harness.schema against the dataclasses below (see
workloads/prices.example.yaml), so every mistake reads ``file:line: key: expected ...``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional

from harness import stats
from harness.cells import ResultCell
from harness.figures import metric_value
from harness.records import MeterEnergy
from harness.report.cell_summary import money
from harness.schema import check_file

SECONDS_PER_YEAR = 365.25 * 86400


@dataclass
class HardwareMatch:
    """Which cells a hardware price applies to: every given key must match."""

    backend: Optional[str | int] = None
    backend_type: Optional[str | int] = None
    device: Optional[str | int] = None
    host: Optional[str | int] = None
    run: Optional[str | int] = None

    def given(self) -> dict[str, str]:
        return {f.name: str(getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None}

    def matches(self, c: ResultCell) -> bool:
        have = {"backend": c.record.backend, "backend_type": c.record.backend_type, "device": c.record.device,
                "host": c.host, "run": c.run_id}
        return all(str(have[k]) == v for k, v in self.given().items())

    def problems(self) -> list[tuple[str, str]]:
        if not self.given():
            return [("", f"expected at least one of {', '.join(f.name for f in fields(self))} "
                         "(e.g. {device: cuda:0})")]
        return []


@dataclass
class HardwarePrice:
    match: HardwareMatch
    price: float = field(metadata={"range": (0, 1e12)})  # purchase price
    lifetime_years: float = field(metadata={"range": (0.01, 100)})  # depreciation period
    name: str = ""
    utilisation: Optional[float] = field(default=None, metadata={"range": (1e-6, 1)})  # overrides the file's


@dataclass
class Prices:
    electricity_per_kwh: float = field(metadata={"range": (0, 1e6)})
    utilisation: float = field(metadata={"range": (1e-6, 1)})  # share of the lifetime spent producing tokens
    currency: str = "USD"  # a label only
    pue: float = field(default=1.0, metadata={"range": (1, 10)})  # facility overhead on measured energy
    hardware: list[HardwarePrice] = field(default_factory=list)  # the first that matches a cell is used
    source: str = field(default="", init=False)  # the file it was read from

    def for_cell(self, c: ResultCell) -> Optional[HardwarePrice]:
        return next((hw for hw in self.hardware if hw.match.matches(c)), None)


def load_prices(path: str | Path) -> Prices:
    """Read and check a prices file; ConfigError lists every problem as file:line: key: expected."""
    prices = check_file(Prices, path, "prices")
    prices.source = str(path)
    return prices


@dataclass
class CostPerMillion:
    """Cost of one million generated tokens, in the prices' currency; None where unknown."""

    hardware: Optional[float] = None
    energy: Optional[float] = None
    total: Optional[float] = None  # hardware + energy; None unless both are known
    notes: list[str] = field(default_factory=list)

    def text(self, currency: str) -> str:
        """The cost as a reader should see it: a total only when both shares are known."""
        if self.total is not None:
            return f"{money(self.hardware)} + {money(self.energy)} = {money(self.total, currency)}"
        if self.hardware is not None:
            return f"{money(self.hardware, currency)} + energy unknown (incomplete: hardware only)"
        if self.energy is not None:
            return f"hardware price unknown + {money(self.energy, currency)} energy (incomplete)"
        return "-"


def cost_per_million(c: ResultCell, tpj_meter: Optional[MeterEnergy], prices: Prices) -> CostPerMillion:
    r = c.record
    e2e = stats.median(metric_value(c, "e2e_s").samples)  # the median alone: no interval needed
    out = CostPerMillion()
    if not e2e or not c.ok:
        out.notes.append("no valid timing")
        return out
    T = r.batch * r.gen_len / e2e
    hw = prices.for_cell(c)
    u = hw.utilisation if hw and hw.utilisation is not None else prices.utilisation
    if hw:
        out.hardware = hw.price / (hw.lifetime_years * SECONDS_PER_YEAR * u * T) * 1e6
    else:
        out.notes.append("no hardware price matches")
    tpj = tpj_meter.tokens_per_joule_gross if tpj_meter else None
    if tpj:
        busy_j = 1e6 / tpj
        idle_w = tpj_meter.idle_w
        idle_j = idle_w * (1e6 / T) * (1 - u) / u if idle_w is not None else 0.0
        if idle_w is None:
            out.notes.append("idle power unknown: idle time not costed")
        out.energy = (busy_j + idle_j) * prices.pue / 3.6e6 * prices.electricity_per_kwh
        if tpj_meter.is_estimate:
            out.notes.append("energy is an ESTIMATE")
    else:
        out.notes.append("no energy figure")
    if out.hardware is not None and out.energy is not None:
        out.total = out.hardware + out.energy
    return out
