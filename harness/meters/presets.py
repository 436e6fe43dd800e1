"""Vendor power CLIs the ``command`` meter knows by name, and the small parsers it uses
to take watts out of their output (a JSON path, one number per line, or a regex).

Why presets: an NPU's power is read through its vendor's ``*-smi`` tool, and each tool
prints a different shape, sometimes in different units from one SDK release to the next.
A lab should write ``{type: command, preset: rbln-smi}``, not rediscover the argv, the
JSON layout and the unit. A preset is data (argv, format, path, unit, scope), so adding
one is one row in :data:`PRESETS`.

Output formats, as documented by the vendors and as parsed by lablup/all-smi (Apache-2.0;
src/device/readers/*.rs and src/device/common/parsers.rs, read 2026):

* ``furiosa-smi info --format json`` (FuriosaAI RNGD; Warboy used ``--output json``): a
  JSON list, one object per NPU, with ``"power"`` a string such as ``"38 W"``
  (all-smi readers/furiosa.rs ``FuriosaSmiInfoJson.power: String``; the table form of
  ``furiosa-smi info`` shows "38 W", developer.furiosa.ai furiosa_smi_cli.html).
* ``rbln-smi --json`` (Rebellions ATOM/REBEL; ``rbln-stat`` is the deprecated name): an
  object ``{"KMD_version": ..., "devices": [{"npu": 0, ..., "card_power": "..."}]}``
  (all-smi readers/rebellions.rs ``RblnDevice.card_power: String``). The string's unit
  varies with the SDK: ``"12.5W"`` in older releases, ``"18810987uW"`` (microwatts) from a
  live RBLN-CA22 on KMD 3.2.2 (all-smi parsers.rs test_parse_power_si_prefixes, where
  reading it as watts had silently given 0 W), and a bare number in some releases.
  So the unit is read from the value, and a bare number is taken in the preset's unit (W).
* ``nvidia-smi --query-gpu=power.draw --format=csv,noheader,nounits``: one line per GPU in
  index order, watts, ``[N/A]`` or ``[Not Supported]`` where the board cannot tell.
  nvidia-smi's help: on Ampere and newer ``power.draw`` is a 1-second average
  (``power.draw.instant`` is the instantaneous value); the ``nvml`` meter, which reads
  the board's energy counter, is the better meter on NVIDIA.
* ``amd-smi metric --power --json``: ROCm 6 prints a list ``[{"gpu": 0, "power":
  {"socket_power": {"value": 410, "unit": "W"}, ...}}]``, ROCm 7 wraps the same objects
  in ``{"gpu_data": [...]}``; a value the GPU does not report is ``"N/A"``
  (amd-smi CLI docs, rocm.docs.amd.com amdsmi; amdsmi.h ``amdsmi_power_info_t``:
  socket_power in W on bare metal).

JSON paths are a deliberately small syntax: dot-separated keys, ``[N]`` for one list
element and ``[*]`` for every element (each element is one device), e.g.
``devices[*].card_power``, ``[*].power``, ``power``. Alternatives are separated by
``|`` and tried in order (the first that resolves wins), for tools whose layout changed
between releases.
"""
from __future__ import annotations

from dataclasses import dataclass
import json
import math
import re
from typing import Any, Optional

#: units a number may carry (or a preset / option may give a bare number): factor to watts
UNITS = {"W": 1.0, "mW": 1e-3, "uW": 1e-6, "µW": 1e-6, "μW": 1e-6, "kW": 1e3}
#: a CLI printing more than this is not printing a power reading
MAX_OUTPUT_CHARS = 1 << 20


class ParseError(ValueError):
    """The tool's output does not hold the watts where the meter was told to look."""


@dataclass(frozen=True)
class Preset:
    """One vendor tool: how to run it and where its watts are."""

    argv: tuple[str, ...]
    format: str  # json | lines | regex
    path: Optional[str] = None  # json: the path to the watts (alternatives separated by |)
    regex: Optional[str] = None  # regex: group "watts" or group 1
    unit: str = "W"  # of a number printed without a unit
    scope: str = "npu-module"
    source: str = ""  # where its output format is documented


PRESETS: dict[str, Preset] = {
    "furiosa-smi": Preset(argv=("furiosa-smi", "info", "--format", "json"), format="json", path="[*].power",
                          scope="npu-module", source="FuriosaAI furiosa-smi CLI docs; all-smi readers/furiosa.rs"),
    "rbln-smi": Preset(argv=("rbln-smi", "--json"), format="json", path="devices[*].card_power",
                       scope="npu-module", source="Rebellions rbln-smi; all-smi readers/rebellions.rs"),
    "nvidia-smi": Preset(argv=("nvidia-smi", "--query-gpu=power.draw", "--format=csv,noheader,nounits"),
                         format="lines", scope="gpu-board", source="nvidia-smi --help-query-gpu"),
    "amd-smi": Preset(argv=("amd-smi", "metric", "--power", "--json"), format="json",
                      path="gpu_data[*].power.socket_power | [*].power.socket_power",
                      scope="gpu-board", source="ROCm amd-smi CLI docs; amdsmi.h amdsmi_power_info_t"),
}

FORMATS = ("regex", "json", "lines")

_SEGMENT = re.compile(r"([^.\[\]]*)((?:\[(?:\*|\d+)\])*)")
_INDEX = re.compile(r"\[(\*|\d+)\]")


def parse_path(path: str) -> list[list[tuple[str, Any]]]:
    """A path string as alternatives, each a list of steps ("key", name) or ("index", n | "*").

    Raises ValueError with what is wrong, for the option check."""
    alternatives = []
    for alt in path.split("|"):
        alt = alt.strip()
        if not alt:
            raise ValueError(f"empty alternative in JSON path {path!r}")
        steps: list[tuple[str, Any]] = []
        for seg in alt.split("."):
            m = _SEGMENT.fullmatch(seg)
            if not m or (not m.group(1) and not m.group(2)):
                raise ValueError(f"JSON path {alt!r}: cannot read segment {seg!r} "
                                 "(expected key, key[N], key[*] or [*])")
            if m.group(1):
                steps.append(("key", m.group(1)))
            for idx in _INDEX.findall(m.group(2)):
                steps.append(("index", idx if idx == "*" else int(idx)))
        alternatives.append(steps)
    return alternatives


def _walk(value: Any, steps: list[tuple[str, Any]], where: str) -> list[Any]:
    """Every value the steps lead to (a wildcard multiplies); ParseError names the first miss."""
    vals = [value]
    for kind, arg in steps:
        out = []
        for v in vals:
            if kind == "key":
                if not isinstance(v, dict) or arg not in v:
                    keys = ", ".join(list(map(str, v))[:12]) if isinstance(v, dict) else type(v).__name__
                    raise ParseError(f"no key {arg!r} after {where or 'the top level'} (found: {keys})")
                out.append(v[arg])
            elif not isinstance(v, list):
                raise ParseError(f"expected a list at {where or 'the top level'}, found {type(v).__name__}")
            elif arg == "*":
                out.extend(v)
            elif arg >= len(v):
                raise ParseError(f"index [{arg}] past the end of {where or 'the top level'} ({len(v)} items)")
            else:
                out.append(v[arg])
        vals = out
        if kind == "key":
            where = f"{where}.{arg}" if where else str(arg)
        else:
            where = f"{where}[{arg}]"
    return vals


_NUMBER = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-zµμ]*)\s*")


def to_watts(value: Any, unit: str = "W") -> float:
    """Watts from what a tool printed: a number (in ``unit``), a string with or without a
    unit ("35.2", "35.2 W", "18810987uW", "150W/250W": the first of a current/limit pair),
    or amd-smi's ``{"value": N, "unit": "W"}``. Raises ParseError for anything else
    ("N/A", a negative or non-finite figure, an unknown unit)."""
    if isinstance(value, dict) and "value" in value:
        u = value.get("unit", unit)
        if not isinstance(u, str):
            raise ParseError(f"unit {u!r} is not a string")
        return to_watts(value["value"], u)
    if isinstance(value, bool) or value is None:
        raise ParseError(f"expected a power figure, got {json.dumps(value)}")
    if isinstance(value, (int, float)):
        if unit not in UNITS:
            raise ParseError(f"unknown power unit {unit!r} (known: {', '.join(UNITS)})")
        w = float(value) * UNITS[unit]
    elif isinstance(value, str):
        m = _NUMBER.fullmatch(value.split("/")[0])
        if not m:
            raise ParseError(f"expected a power figure, got {value[:40]!r}")
        u = m.group(2) or unit
        if u not in UNITS:
            raise ParseError(f"unknown power unit {u!r} in {value[:40]!r} (known: {', '.join(UNITS)})")
        w = float(m.group(1)) * UNITS[u]
    else:
        raise ParseError(f"expected a power figure, got a {type(value).__name__}")
    if not math.isfinite(w) or w < 0:
        raise ParseError(f"expected a finite power >= 0, got {value!r}")
    return w


def read_json(text: str, path: str, unit: str) -> list[float]:
    """Watts per device (one per element a wildcard reached; one for a path without)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ParseError(f"output is not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise ParseError("output is JSON nested too deeply") from None
    first: Optional[ParseError] = None
    for alt, steps in zip(path.split("|"), parse_path(path)):
        try:
            vals = _walk(data, steps, "")
        except ParseError as e:
            first = first or e
            continue
        if not vals:
            raise ParseError(f"no device at {alt.strip()!r} (an empty list)")
        out = []
        for i, v in enumerate(vals):
            try:
                out.append(to_watts(v, unit))
            except ParseError as e:
                raise ParseError(f"device {i} at {alt.strip()!r}: {e}") from None
        return out
    raise ParseError(f"no value at {path!r}: {first}")


def read_lines(text: str, unit: str) -> list[float]:
    """One figure per non-empty line (nvidia-smi csv,noheader,nounits: one line per GPU)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise ParseError("no output lines")
    out = []
    for i, ln in enumerate(lines):
        try:
            out.append(to_watts(ln.split(",")[0], unit))
        except ParseError as e:
            raise ParseError(f"line {i + 1}: {e}") from None
    return out


def read_regex(text: str, rx: re.Pattern, unit: str) -> list[float]:
    """One figure per match (group "watts", else group 1): each match is one device."""
    group = "watts" if "watts" in rx.groupindex else 1
    out = []
    for m in rx.finditer(text):
        try:
            out.append(to_watts(m.group(group) or "", unit))
        except ParseError:
            raise ParseError(f"regex group matched {m.group(group)!r}, expected a number") from None
    if not out:
        raise ParseError(f"does not match regex {rx.pattern!r}")
    return out
