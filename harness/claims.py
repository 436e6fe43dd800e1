"""Claim files: what a claim says, and how a claims file is read and checked.

A claim names a metric, a subject configuration, a baseline configuration, a workload
and a factor (see workloads/claims.example.yaml):

    claims:
      - name: onnxruntime is 2x faster than torch at decode
        metric: decode_tps
        subject:  {backend: onnx-cpu}
        baseline: {backend: torch-cpu}
        workload: {model: smollm2-135m, batch: 1, prompt_len: 128, gen_len: 64}
        at_least: 2
        required: true

The file is checked by harness.schema against the dataclasses below, so every mistake
is reported at once as ``file:line: claims[i].key: expected ...``, like a suite's.
harness.verdicts judges the claims against measured cells.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
import math
from pathlib import Path
from typing import Any, Literal, Optional

from harness.figures import ALIASES, METRICS, canonical_metric
from harness.schema import Checker, ConfigError, read_yaml, short

MetricName = Literal[tuple(METRICS) + tuple(ALIASES)]


@dataclass
class Selector:
    """One side of a claim: the cells whose every given key matches."""

    run: Optional[str | int] = None  # run folder name or path
    backend: Optional[str | int] = None  # the suite's backend label
    backend_type: Optional[str | int] = None
    device: Optional[str | int] = None  # cpu, cuda:0, ...
    dtype: Optional[str | int] = None  # the suite's dtype or the precision the weights really have
    precision: Optional[str | int] = None  # the same as dtype
    host: Optional[str | int] = None
    # a catalog device (harness.catalog): alone, the side is judged by the device's physical
    # bound with no run at all; with other keys, the measured cells ran on that device
    catalog: Optional[str] = None
    # a measurement made outside the project, from the claims file's `external:` list
    external: Optional[str] = None

    def given(self) -> dict[str, str]:
        """The keys the claim sets, as text (YAML may read `run: 2024` as a number)."""
        return {f.name: str(getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None}

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.given().items()) or "any"

    def measured_keys(self) -> dict[str, str]:
        """The keys that select measured cells of the runs (all but catalog and external)."""
        return {k: v for k, v in self.given().items() if k not in ("catalog", "external")}

    @property
    def catalog_only(self) -> bool:
        """A side with no measurement: only a catalog device (and maybe its precision)."""
        return self.catalog is not None and not (set(self.measured_keys()) - {"precision", "dtype"})

    def problems(self) -> list[tuple[str, str]]:
        if not self.given():
            return [("", f"expected at least one of {', '.join(f.name for f in fields(self))} "
                         "(a selector such as {backend: torch-cpu})")]
        if self.external is not None and len(self.given()) > 1:
            return [("external", "an external figure is selected by its name alone (its device, precision and "
                                 "batch are in the claims file's `external:` list)")]
        return []


@dataclass
class Workload:
    """The cells a claim is about; batch "best" compares each side at its best batch."""

    model: str
    # any integer >= 1 (problems() checks it), not the 1..4096 range harness.schema gives a
    # key named "batch" (the accuracy gate's)
    batch: int | str = field(metadata={"range": None})
    prompt_len: int = field(metadata={"range": (1, 1 << 20)})
    gen_len: int = field(metadata={"range": (1, 1 << 20)})
    scenario: Optional[str] = None  # offline, single-stream, server@4, ...

    def describe(self) -> str:
        parts = [f"model={self.model}", f"batch={self.batch}", f"prompt_len={self.prompt_len}",
                 f"gen_len={self.gen_len}"]
        return ", ".join(parts + ([f"scenario={self.scenario}"] if self.scenario is not None else []))

    def problems(self) -> list[tuple[str, str]]:
        b = self.batch
        if b != "best" and not (isinstance(b, int) and b >= 1):
            return [("batch", f"expected a batch size >= 1 or \"best\", got {b!r}")]
        return []


def parse_factor(text: Any) -> Optional[float]:
    """ "at least 100x" / "100x" / 100 -> 100.0; None when it is not a finite number (NaN, inf,
    1e400, a 400-digit integer, a bool, a list...): a claims file is untrusted input."""
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        return None
    if isinstance(text, str):
        text = text.strip().lower().removeprefix("at least").strip().removesuffix("x").strip()
    try:
        value = float(text)
    except (ValueError, OverflowError):  # OverflowError: an int too large for a float
        return None
    return value if math.isfinite(value) else None


@dataclass
class ClaimSpec:
    """One claim as a claims file writes it."""

    metric: MetricName
    subject: Selector
    baseline: Selector
    workload: Workload
    name: str = ""
    # the factor: 100 means "at least 100x". Any, checked by problems(): typed as a number, a
    # value of the wrong type would be replaced by None before problems() runs, which would
    # then also report the key as missing
    at_least: Any = None
    factor: Any = None  # the same, as text: "at least 100x"
    required: bool = False  # a REFUTED verdict makes `harness verify` exit 1
    energy: Literal["gross", "net"] = "gross"
    scope: Optional[str] = None  # only energy meters of this scope (gpu-board, wall, ...)
    description: str = ""  # free text for the reader of the file

    def factor_value(self) -> Optional[float]:
        """The factor as a finite number > 0; None when absent or not one."""
        if self.at_least is not None:
            a = self.at_least
            f = parse_factor(a) if isinstance(a, (int, float)) else None  # at_least takes numbers only
        elif self.factor is not None:
            f = parse_factor(self.factor)
        else:
            return None
        return f if f is not None and f > 0 else None

    def problems(self) -> list[tuple[str, str]]:
        if self.at_least is not None and self.factor is not None:
            return [("factor", "give either `at_least: N` or `factor: \"at least Nx\"`, not both")]
        if self.at_least is None and self.factor is None:
            return [("", "missing key `at_least` (the factor, e.g. `at_least: 100` for \"at least 100x\")")]
        if self.factor_value() is not None:
            return []
        if self.at_least is not None:
            return [("at_least", f"expected a number > 0 (the factor, e.g. 100 for \"at least 100x\"), "
                                 f"got {short(self.at_least)}")]
        return [("factor", f"expected \"at least Nx\" or a number > 0, got {short(self.factor)}")]


@dataclass
class ExternalFigure:
    """A figure measured outside the project (a paper, a vendor, another lab's notes): a
    baseline or subject that no run of ours holds. It has no repetitions, so no interval:
    a verdict that rests on it says so."""

    name: str  # the series; selectors write {external: NAME}; one entry per batch
    device: str  # the catalog device it ran on
    model: str
    precision: str
    batch: int = field(metadata={"range": (1, 1 << 20)})
    source: str
    j_per_token: Optional[float] = None  # per generated token
    decode_tps: Optional[float] = None
    prompt_len: Optional[int] = field(default=None, metadata={"range": (1, 1 << 20)})
    gen_len: Optional[int] = field(default=None, metadata={"range": (1, 1 << 20)})
    energy: Literal["gross", "net"] = "gross"
    scope: Optional[str] = None  # gpu-board, wall, ...
    stack: str = ""  # the software that ran it

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.j_per_token is None and self.decode_tps is None:
            out.append(("", "expected j_per_token or decode_tps (the measured figure)"))
        for k in ("j_per_token", "decode_tps"):
            v = getattr(self, k)
            if v is not None and not (0 < v < float("inf")):
                out.append((k, f"expected a finite number > 0, got {v!r}"))
        if not self.source.strip():
            out.append(("source", "expected where the figure was measured and published"))
        return out


@dataclass
class ClaimsFile:
    claims: list[ClaimSpec] = field(default_factory=list)
    devices: Optional[str] = None  # a folder of device YAML beside the shipped catalog (relative to this file)
    external: list[ExternalFigure] = field(default_factory=list)

    def problems(self) -> list[tuple[str, str]]:
        return [] if self.claims else [("claims", "expected a non-empty list of claims (name, metric, subject, "
                                                  "baseline, workload, at_least)")]


@dataclass
class Claim:
    """A checked claim, ready to judge."""

    name: str
    metric: str  # a key of harness.figures.METRICS
    subject: Selector
    baseline: Selector
    workload: Workload
    at_least: float
    required: bool = False
    energy: str = "gross"  # gross | net
    scope: Optional[str] = None
    where: str = ""  # file:line
    external: list[ExternalFigure] = field(default_factory=list)  # the claims file's external figures
    catalog: Optional[Any] = None  # harness.catalog.Catalog; None: the shipped catalog

    def describe(self) -> str:
        """The claim in words. For a lower-is-better metric the factor is an improvement, so
        "at least 2x" reads "at most 1/2 of the baseline's" (never "at least 2x the TTFT")."""
        m = METRICS[self.metric]
        if m.higher_is_better:
            return (f"{self.subject.describe()} has at least {self.at_least:g}x the {m.label} of "
                    f"{self.baseline.describe()} (higher is better) on {self.workload.describe()}")
        return (f"the {m.label} of {self.subject.describe()} is at most 1/{self.at_least:g} of that of "
                f"{self.baseline.describe()}, i.e. at least {self.at_least:g}x lower (lower is better) on "
                f"{self.workload.describe()}")


def load_claims(path: str | Path) -> list[Claim]:
    """Read and check a claims file; ConfigError lists every problem as file:line: key: expected."""
    from harness.catalog import load_catalog, shipped_catalog

    doc = read_yaml(path, "claims")
    chk = Checker.for_doc(doc)
    spec = chk.dataclass(ClaimsFile, doc.data, "")
    if chk.problems or spec is None:
        raise ConfigError(chk.problems or [f"{doc.path}: expected a mapping with the key `claims:`"])
    folder = doc.path.parent / spec.devices if spec.devices else None
    if folder is not None and not folder.exists():
        chk.fail("devices", f"no such devices folder or file: {folder}")
        raise ConfigError(chk.problems)
    catalog = load_catalog([folder]) if folder is not None else shipped_catalog()
    series = {e.name for e in spec.external}
    for i, e in enumerate(spec.external):
        if catalog.get(e.device) is None:
            chk.fail(f"external[{i}].device", f"not a catalog device; known: {', '.join(catalog.devices)}")
    for i, c in enumerate(spec.claims):
        for side in ("subject", "baseline"):
            sel = getattr(c, side)
            if sel.catalog is not None and catalog.get(sel.catalog) is None:
                chk.fail(f"claims[{i}].{side}.catalog", f"not a catalog device; known: {', '.join(catalog.devices)}")
            if sel.external is not None and sel.external not in series:
                chk.fail(f"claims[{i}].{side}.external", "no figure of that name in the file's `external:` list"
                         + (f" (known: {', '.join(sorted(series))})" if series else ""))
    if chk.problems:
        raise ConfigError(chk.problems)
    return [Claim(name=c.name or f"claim {i + 1}", metric=canonical_metric(c.metric), subject=c.subject,
                  baseline=c.baseline, workload=c.workload, at_least=c.factor_value(), required=c.required,
                  energy=c.energy, scope=c.scope, where=f"{doc.path}:{doc.lines.get(f'claims[{i}]', '?')}",
                  external=list(spec.external), catalog=catalog)
            for i, c in enumerate(spec.claims)]
