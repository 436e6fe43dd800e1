"""The device catalog: what each device can physically do, every number with its source.

A catalog file (workloads/devices/*.yaml, or a user's own folder) lists devices:

    devices:
      - name: h100-sxm
        label: NVIDIA H100 SXM5 80GB
        kind: gpu                                   # gpu | npu | pim | cpu
        match: ["H100 80GB HBM3"]                   # measured cells whose GPU/CPU name contains one
        memory:
          kind: HBM3
          capacity_gb:    {value: 80,   source: "..."}
          bandwidth_gb_s: {value: 3350, source: "..."}
          pj_per_bit:     {value: 3.59, source: "..."}   # energy to bring one bit to the compute
        peak_tflops: {bf16: {value: 989, source: "..."}}  # dense; TOPS for integer formats
        mac_pj:  {value: 0.32, source: "..."}          # one multiply-accumulate
        tdp_w:   {value: 700,  source: "..."}
        idle_w:  {value: 70.6, source: "..."}
        not_published: ["what was left out, and why"]

Every number is a {value, source} pair: a figure without a source cannot be checked, so
the schema refuses it. A figure that is not published is left out (the bound model then
drops its term, which keeps a floor a floor) and said so under `not_published`.
Files are checked by harness.schema like suites: every problem as file:line: key.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Literal, Optional

from harness.schema import Checker, ConfigError, read_yaml

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "workloads" / "devices"
#: the precisions a peak may be given for (integer formats in TOPS)
PEAK_PRECISIONS = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8", "int4")


@dataclass
class Sourced:
    """One published or measured number and where it comes from."""

    value: float
    source: str

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if not self.value > 0 or self.value == float("inf"):
            out.append(("value", f"expected a finite number > 0, got {self.value!r}"))
        if not self.source.strip():
            out.append(("source", "expected where the number comes from (a spec sheet, paper or measurement)"))
        return out


@dataclass
class Memory:
    kind: str
    capacity_gb: Optional[Sourced] = None  # 1e9 bytes
    bandwidth_gb_s: Optional[Sourced] = None  # 1e9 bytes/s, the peak the memory can deliver to the compute
    pj_per_bit: Optional[Sourced] = None  # energy to bring one bit from the cell to where it is used
    # on-chip memory (last-level cache, SRAM): a model whose weights and KV cache fit there
    # never reads them from this memory, so neither its bandwidth nor its energy bounds it
    on_chip_mib: Optional[Sourced] = None


@dataclass
class PeakThroughput:
    """Dense peak per precision, TFLOPS (TOPS for integer formats)."""

    fp32: Optional[Sourced] = None
    tf32: Optional[Sourced] = None
    bf16: Optional[Sourced] = None
    fp16: Optional[Sourced] = None
    fp8: Optional[Sourced] = None
    int8: Optional[Sourced] = None
    int4: Optional[Sourced] = None

    def given(self) -> dict[str, Sourced]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass
class DeviceSpec:
    """One device (or device class) as a catalog file writes it."""

    name: str
    label: str
    kind: Literal["gpu", "npu", "pim", "cpu"]
    memory: Memory
    peak_tflops: Optional[PeakThroughput] = None
    mac_pj: Optional[Sourced] = None
    tdp_w: Optional[Sourced] = None
    idle_w: Optional[Sourced] = None
    match: list[str] = field(default_factory=list)
    not_published: list[str] = field(default_factory=list)
    where: str = field(default="", init=False)  # file:line, set by the loader

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if not self.name.strip() or any(c.isspace() for c in self.name):
            out.append(("name", f"expected a name without spaces (used in claims and --devices), got {self.name!r}"))
        if any(not m.strip() for m in self.match):
            out.append(("match", "expected non-empty names (an empty one would match every device)"))
        return out

    # --- figures as the bound model uses them (SI units) -----------------------------------

    @property
    def bandwidth_Bps(self) -> Optional[float]:
        b = self.memory.bandwidth_gb_s
        return b.value * 1e9 if b else None

    @property
    def capacity_bytes(self) -> Optional[float]:
        c = self.memory.capacity_gb
        return c.value * 1e9 if c else None

    @property
    def on_chip_bytes(self) -> Optional[float]:
        c = self.memory.on_chip_mib
        return c.value * 2**20 if c else None

    @property
    def j_per_bit(self) -> Optional[float]:
        e = self.memory.pj_per_bit
        return e.value * 1e-12 if e else None

    @property
    def j_per_mac(self) -> Optional[float]:
        return self.mac_pj.value * 1e-12 if self.mac_pj else None

    @property
    def idle_watts(self) -> Optional[float]:
        return self.idle_w.value if self.idle_w else None

    def peak_flops(self, precision: str) -> Optional[float]:
        """FLOP/s (2 per MAC) at this precision; None where no peak is published for it."""
        peaks = self.peak_tflops.given() if self.peak_tflops else {}
        p = peaks.get(PEAK_KEY.get(precision, precision))
        return p.value * 1e12 if p else None

    def matches(self, device_name: str) -> bool:
        low = device_name.lower()
        return any(m.lower() in low for m in self.match)


#: the peak a workload precision runs at: GGML blocks run on the 8-/4-bit integer units
PEAK_KEY = {"q8_0": "int8", "q4_0": "int4"}


@dataclass
class CatalogFile:
    devices: list[DeviceSpec] = field(default_factory=list)

    def problems(self) -> list[tuple[str, str]]:
        return [] if self.devices else [("devices", "expected a non-empty list of devices")]


@dataclass
class Catalog:
    devices: dict[str, DeviceSpec]
    sources: list[str]  # the files read, in order

    def get(self, name: str) -> Optional[DeviceSpec]:
        return self.devices.get(name)

    def for_name(self, device_name: Optional[str]) -> Optional[DeviceSpec]:
        """The catalog device whose `match:` names one is contained in this device name (first match)."""
        if not device_name:
            return None
        return next((d for d in self.devices.values() if d.matches(device_name)), None)


def device_name(device: str, inventory: dict) -> Optional[str]:
    """What a run's inventory calls the device a cell ran on: the GPU's name for cuda:N, the
    CPU model for cpu; None when it does not say. Never the host name, which could contain a
    catalog device's name by chance."""
    dev = str(device or "")
    if dev.startswith("cuda"):
        idx = int(dev.split(":")[1]) if ":" in dev and dev.split(":")[1].isdigit() else 0
        return next((g.get("name") for g in inventory.get("gpus") or [] if isinstance(g, dict)
                     and g.get("index") == idx), None)
    if dev == "cpu":
        return (inventory.get("cpu") or {}).get("model")
    return None


def _files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ConfigError([f"{folder}: no such devices folder"])
    files = sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml"))
    if not files:
        raise ConfigError([f"{folder}: no *.yaml device files in it"])
    return files


def load_catalog(extra: list[str | Path] | None = None, shipped: bool = True) -> Catalog:
    """The shipped catalog plus each extra folder or file; ConfigError with every problem in
    every file (file:line: key: expected), including a device name defined twice."""
    paths: list[Path] = _files(SHIPPED_DIR) if shipped else []
    for e in extra or []:
        p = Path(e)
        paths += _files(p) if p.is_dir() else [p]
    problems: list[str] = []
    devices: dict[str, DeviceSpec] = {}
    for path in paths:
        try:
            doc = read_yaml(path, "devices")
        except ConfigError as err:
            problems += err.problems
            continue
        chk = Checker.for_doc(doc)
        spec = chk.dataclass(CatalogFile, doc.data, "")
        if spec is None and not chk.problems:
            chk.problems.append(f"{doc.path}: expected a mapping with the key `devices:`")
        for i, d in enumerate(spec.devices if spec else []):
            d.where = f"{doc.path}:{doc.lines.get(f'devices[{i}]', '?')}"
            if d.name in devices:
                chk.fail(f"devices[{i}].name", f"device {d.name!r} is already defined at {devices[d.name].where}")
            elif d.name:
                devices[d.name] = d
        problems += chk.problems
    if problems:
        raise ConfigError(problems)
    return Catalog(devices, [str(p) for p in paths])


@lru_cache(maxsize=1)
def shipped_catalog() -> Catalog:
    """The shipped catalog, read once per process (verdicts consult it for every cell)."""
    return load_catalog()
