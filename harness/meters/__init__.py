"""Energy and telemetry meters, all behind one window API (see base.Meter).

``build_meters`` turns a suite's ``meters:`` list into meter objects::

    meters:
      - {type: rapl}
      - {type: nvml, index: 0}
      - {type: csv-log, path: wall.csv, columns: {timestamp: time, watts: W}, clock_offset_s: auto, tz: UTC}
      - {type: ptdaemon-log, path: spl.txt}
      - {type: command, argv: [npu-smi, info], regex: 'Power: (\\d+\\.?\\d*) W', period_s: 0.1, scope: npu-module}
      - {type: estimate, watts: 350, scope: gpu-board}
"""

from typing import Optional

from harness.schema import METER_ENTRY_KEYS, build

from .base import METHODS, SCOPES, EnergyReading, Meter, MeterError
from .clock import ClockAlignment, ClockSignature, align_clocks
from .command import CommandMeter
from .estimate import EstimateMeter
from .external_log import CsvLogMeter, PtdaemonLogMeter
from .nvml import NvmlMeter, PynvmlDevice, counter_vs_sampled
from .rapl import RaplMeter

METER_TYPES: dict[str, type[Meter]] = {
    cls.type: cls
    for cls in (NvmlMeter, RaplMeter, CsvLogMeter, PtdaemonLogMeter, CommandMeter, EstimateMeter)
}


def build_meters(configs: Optional[list[dict]], where: str = "meters") -> list[Meter]:
    """Meters from a suite's ``meters:`` list; MeterError names the entry and key.

    Meter names must be unique (they key the results): give one a ``name``
    when two would collide (two estimates, two logs with the same file name).
    """
    meters: list[Meter] = []
    for i, cfg in enumerate(configs or []):
        at = f"{where}[{i}]"
        if not isinstance(cfg, dict):
            raise MeterError(f"{at}: expected a mapping with a 'type', got {cfg!r}")
        kind = cfg.get("type")
        if kind not in METER_TYPES:
            raise MeterError(f"{at}: unknown meter type {kind!r}; expected one of {', '.join(METER_TYPES)}")
        cls = METER_TYPES[kind]
        opts = {k: v for k, v in cfg.items() if k not in METER_ENTRY_KEYS}  # `primary` is the report's
        meter = cls(build(cls.Options, opts, f"{at} ({kind})", error=MeterError))
        meters.append(meter)
    seen: dict[str, int] = {}
    for i, m in enumerate(meters):
        if m.name in seen:
            raise MeterError(f"{where}[{i}]: meter name {m.name!r} is already used by {where}[{seen[m.name]}]; "
                             f"give one of them a 'name'")
        seen[m.name] = i
    return meters


__all__ = [
    "METER_TYPES", "METHODS", "SCOPES", "EnergyReading", "Meter", "MeterError", "build_meters",
    "NvmlMeter", "PynvmlDevice", "RaplMeter", "CsvLogMeter", "PtdaemonLogMeter", "CommandMeter",
    "EstimateMeter", "counter_vs_sampled", "ClockAlignment", "ClockSignature", "align_clocks",
]
