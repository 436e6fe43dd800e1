"""Claim files -> verdicts: is "X is at least N times more efficient than Y" supported
by what was measured?

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

The measured ratio is an *improvement factor*: subject / baseline for metrics where
higher is better (tokens/s, tokens per joule), baseline / subject where lower is better
(J/token, TTFT, TPOT). So "at_least: 100" on j_per_token means the subject spends at
most 1/100 of the baseline's joules per token.

Verdict, from the bootstrap interval of that ratio (harness.stats):
  SUPPORTED     the interval's lower bound >= factor
  REFUTED       the interval's upper bound <  factor
  INCONCLUSIVE  otherwise, and whenever a side is missing, failed or invalid (accuracy
                gate), has no interval, or its energy figure is an estimate (an estimate
                can neither support nor refute a measured claim; the would-be verdict is
                shown as a caveat).
Every verdict lists its caveats: energy scopes that differ, precisions or accuracy that
differ, a baseline under 50 % of its decode roofline (or with no roofline at all),
meter windows too short, estimates, fewer than 5 repetitions, invalid cells. It also
reports the baseline's best measured configuration (the batch at which it does best on
the claim's metric) and the ratio against that, since a claim against batch 1 is not a
claim against the hardware.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import math
from pathlib import Path
from typing import Any

from harness import stats
from harness.results import ResultsError, load_run

ROOFLINE_FLOOR_PCT = 50.0  # a baseline under this share of its decode roofline is "far under" it


class ClaimsError(ResultsError):
    """A problem in a claims file: names the file, the key and what was expected."""


# --- cells -------------------------------------------------------------------------------

@dataclass
class Cell:
    """One cell record with the run it came from."""

    run_id: str
    run_dir: Path
    meta: dict
    record: dict

    def get(self, key: str, default=None):
        return self.record.get(key, default)

    @property
    def precision(self) -> str:
        return self.record.get("precision") or self.record.get("dtype") or "-"

    @property
    def host(self) -> str:
        return (self.meta.get("inventory") or {}).get("hostname") or "?"

    @property
    def workload_key(self) -> tuple:
        r = self.record
        return (r.get("model"), self.precision, r.get("batch"), r.get("prompt_len"), r.get("gen_len"),
                r.get("scenario", "offline"))

    @property
    def config_key(self) -> tuple:
        return (self.run_id, self.record.get("backend"), self.record.get("device"))

    @property
    def config_label(self) -> str:
        return f"{self.record.get('backend')} @ {self.device_label} [{self.run_id}]"

    @property
    def device_label(self) -> str:
        """The device as a reader knows it: cpu model or GPU name, and host."""
        dev = str(self.record.get("device") or "?")
        inv = self.meta.get("inventory") or {}
        name = None
        if dev.startswith("cuda"):
            idx = int(dev.split(":")[1]) if ":" in dev and dev.split(":")[1].isdigit() else 0
            gpus = inv.get("gpus") or []
            name = next((g.get("name") for g in gpus if g.get("index") == idx), None)
        elif dev == "cpu":
            name = (inv.get("cpu") or {}).get("model")
        return f"{dev} ({name}, {self.host})" if name else f"{dev} ({self.host})"

    @property
    def ok(self) -> bool:
        return self.record.get("status") == "ok" and self.record.get("valid") is not False

    @property
    def invalid(self) -> bool:
        """Failed the accuracy gate (a failed cell, which has no outputs at all, is not "invalid")."""
        st = self.record.get("status")
        return st == "invalid" or (st != "failed" and self.record.get("valid") is False)

    @property
    def status_label(self) -> str:
        if self.invalid:
            return "INVALID"
        return "FAILED" if self.record.get("status") == "failed" else "ok"

    @property
    def short(self) -> str:
        r = self.record
        return (f"{r.get('backend')} {self.precision} b{r.get('batch')} p{r.get('prompt_len')} g{r.get('gen_len')} "
                f"[{self.run_id}]")


def load_cells(run_dirs) -> list[Cell]:
    """Cells of every run folder, in order; the roofline is filled from run.json's calibration
    where a record lacks it."""
    from harness.roofline import roofline

    cells: list[Cell] = []
    seen: set[str] = set()
    for d in run_dirs:
        d = Path(d)
        meta, records = load_run(d)
        run_id = str(meta.get("run_id") or d.name)
        if run_id in seen:  # two folders of the same name: keep them apart
            run_id = f"{run_id}({d})"
        seen.add(run_id)
        cals = meta.get("calibration") or {}
        for r in records:
            if not r.get("roofline") and r.get("status") != "failed" and cals.get(r.get("device")):
                try:
                    r = dict(r, roofline=roofline(r, cals[r["device"]]))
                except (KeyError, TypeError, ValueError, ZeroDivisionError):
                    pass
            cells.append(Cell(run_id, d, meta, r))
    return cells


# --- metrics ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class MetricDef:
    name: str
    label: str
    unit: str
    higher_is_better: bool
    energy: bool = False


METRICS: dict[str, MetricDef] = {m.name: m for m in (
    MetricDef("decode_tps", "decode throughput", "tok/s", True),
    MetricDef("prefill_tps", "prefill throughput", "tok/s", True),
    MetricDef("ttft_s", "time to first token", "s", False),
    MetricDef("tpot_s", "time per output token", "s", False),
    MetricDef("e2e_s", "request latency", "s", False),
    MetricDef("tokens_per_joule", "generated tokens per joule", "tok/J", True, energy=True),
    MetricDef("j_per_token", "joules per generated (decode) token", "J/tok", False, energy=True),
    MetricDef("j_per_prompt_token", "joules per prompt (prefill) token", "J/tok", False, energy=True),
    MetricDef("j_per_1k_tokens", "joules per 1000 generated tokens", "J/1k tok", False, energy=True),
    MetricDef("tokens_per_s_per_watt", "decode tokens/s per watt", "tok/s/W", True, energy=True),
)}
ALIASES = {"tokens_per_j": "tokens_per_joule", "tok_per_j": "tokens_per_joule", "tokens_per_s": "decode_tps",
           "decode_tokens_per_s": "decode_tps", "j_per_generated_token": "j_per_token",
           "joules_per_token": "j_per_token", "tpot": "tpot_s", "ttft": "ttft_s"}

_QUALITY_RANK = {"ok": 0, "short-window": 1, "estimate": 2}


def meter_figure(m: dict, metric: str, kind: str = "gross") -> float | None:
    """The metric's value from one meter summary (None where the meter has no figure)."""
    tpj = m.get(f"tokens_per_joule_{kind}")
    if metric == "tokens_per_joule":
        return tpj
    if metric == "j_per_token":
        return m.get(f"j_per_generated_token_{kind}")
    if metric == "j_per_prompt_token":
        return m.get(f"j_per_prompt_token_{kind}")
    if metric == "j_per_1k_tokens":
        return 1000.0 / tpj if tpj else None
    if metric == "tokens_per_s_per_watt":
        return m.get("generation_avg_w")  # the divisor; the caller divides decode tok/s by it
    raise KeyError(metric)


def primary_meter(record: dict, metric: str = "tokens_per_joule", kind: str = "gross",
                  scope: str | None = None) -> dict | None:
    """The meter whose figure a table shows: a measurement over an estimate, a full window
    over a short one; the first configured meter among equals. None if no meter has it."""
    e = record.get("energy") or {}
    cands = []
    for i, m in enumerate(e.get("meters") or []):
        if scope and m.get("scope") != scope:
            continue
        v = meter_figure(m, metric, kind)
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            continue
        q = "estimate" if m.get("method") == "estimate" else m.get("quality", "ok")
        cands.append((_QUALITY_RANK.get(q, 3), i, m))
    return min(cands, key=lambda t: (t[0], t[1]))[2] if cands else None


def energy_unavailable_reason(record: dict) -> str:
    e = record.get("energy") or {}
    if e.get("status"):
        return f"energy {e['status']}"
    reasons = sorted({m.get("reason") for m in e.get("meters") or [] if m.get("reason")})
    return "no energy figure" + (f" ({'; '.join(reasons)})" if reasons else "")


def is_estimate(m: dict | None) -> bool:
    return bool(m) and (m.get("method") == "estimate" or m.get("quality") == "estimate")


@dataclass
class MetricValue:
    """A cell's samples for one metric (per repetition) and where they came from."""

    metric: str
    samples: list[float]
    meter: dict | None = None  # energy metrics: the meter summary used
    reason: str | None = None  # why there is no value

    @property
    def n(self) -> int:
        return len(self.samples)

    def summary(self) -> stats.Summary:
        return stats.summarize(self.samples)


def _samples(record: dict, key: str) -> list[float]:
    m = (record.get("metrics") or {}).get(key) or {}
    s = m.get("samples")
    if s:
        return [float(v) for v in s if v is not None]
    return [float(m["median"])] if m.get("median") is not None else []


def metric_value(cell: Cell | dict, metric: str, kind: str = "gross", scope: str | None = None) -> MetricValue:
    """Per-repetition samples of a metric for one cell.

    Timing metrics are the record's own samples. An energy figure comes from one meter
    window per cell (work repeated inside it), so it has no per-repetition samples of its
    own: its spread is derived from the repetitions' timings (J_i = J x t_i / median(t),
    with t = request time for tokens/J, decode time for J/token, TTFT for J/prompt token).
    That interval reflects timing variation only, not meter error.
    """
    rec = cell.record if isinstance(cell, Cell) else cell
    metric = ALIASES.get(metric, metric)
    if metric not in METRICS:
        raise KeyError(metric)
    if rec.get("status") == "failed":
        return MetricValue(metric, [], reason="cell failed")
    if not METRICS[metric].energy:
        s = _samples(rec, metric)
        return MetricValue(metric, s, reason=None if s else f"no {metric} samples")
    if metric == "tokens_per_s_per_watt":
        m = primary_meter(rec, "tokens_per_s_per_watt", kind, scope)
        dec = _samples(rec, "decode_tps")
        if m is None or not dec or not m.get("generation_avg_w"):
            return MetricValue(metric, [], m, reason=energy_unavailable_reason(rec))
        w = m["generation_avg_w"]
        return MetricValue(metric, [d / w for d in dec], m)
    m = primary_meter(rec, metric, kind, scope)
    if m is None:
        return MetricValue(metric, [], reason=energy_unavailable_reason(rec))
    value = meter_figure(m, metric, kind)
    e2e, ttft = _samples(rec, "e2e_s"), _samples(rec, "ttft_s")
    if metric == "j_per_prompt_token":
        t = ttft
    elif metric == "j_per_token" and len(e2e) == len(ttft):
        t = [a - b for a, b in zip(e2e, ttft)]
    else:
        t = e2e
    t = [x for x in t if x > 0]
    if len(t) < 2:
        return MetricValue(metric, [value], m)
    med = float(sorted(t)[len(t) // 2]) if len(t) % 2 else sum(sorted(t)[len(t) // 2 - 1:len(t) // 2 + 1]) / 2
    if METRICS[metric].higher_is_better:  # tokens per joule falls as time grows
        return MetricValue(metric, [value * med / x for x in t], m)
    return MetricValue(metric, [value * x / med for x in t], m)


def improvement(subject: MetricValue, baseline: MetricValue) -> stats.Ratio:
    """How many times better the subject is (> 1: better), with its interval."""
    if METRICS[subject.metric].higher_is_better:
        return stats.ratio(subject.samples, baseline.samples)
    return stats.ratio(baseline.samples, subject.samples)


# --- claim files -----------------------------------------------------------------------------

SELECTOR_KEYS = ("run", "backend", "backend_type", "device", "dtype", "precision", "host")
WORKLOAD_KEYS = ("model", "batch", "prompt_len", "gen_len", "scenario")
CLAIM_KEYS = ("name", "metric", "subject", "baseline", "workload", "at_least", "factor", "required", "energy",
              "scope", "description")


@dataclass
class Claim:
    name: str
    metric: str
    subject: dict
    baseline: dict
    workload: dict
    at_least: float
    required: bool = False
    energy: str = "gross"
    scope: str | None = None
    where: str = ""  # file:line

    def describe(self) -> str:
        m = METRICS[self.metric]
        return (f"{_sel(self.subject)} has at least {self.at_least:g}x the {m.label} of {_sel(self.baseline)} "
                f"({'higher' if m.higher_is_better else 'lower'} is better) on {_wl(self.workload)}")


def _sel(s: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in s.items()) or "any"


def _wl(w: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in w.items())


def _line_map(node, path: str = "", out: dict | None = None) -> dict:
    import yaml

    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = f"{path}.{k.value}" if path else str(k.value)
            out[key] = k.start_mark.line + 1
            _line_map(v, key, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _line_map(v, f"{path}[{i}]", out)
    return out


def read_yaml(path: str | Path, what: str, error=ClaimsError) -> tuple[Any, dict]:
    """(data, line map) of a YAML file; errors name the file (and line)."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise error(f"{path}: no such {what} file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{path}: cannot read {what} file ({e})") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise error(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    return data, (_line_map(node) if node is not None else {})


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _parse_factor(text) -> float | None:
    """ "at least 100x" / "100x" / 100 -> 100.0 """
    if _num(text):
        return float(text)
    if isinstance(text, str):
        t = text.strip().lower().removeprefix("at least").strip().removesuffix("x").strip()
        try:
            return float(t)
        except ValueError:
            return None
    return None


def load_claims(path: str | Path) -> list[Claim]:
    """Parse and check a claims file; every problem names the file, line, key and expectation."""
    path = Path(path)
    data, lines = read_yaml(path, "claims")
    problems: list[str] = []

    def fail(key: str, msg: str) -> None:
        line = lines.get(key) or lines.get(key.rsplit(".", 1)[0]) or lines.get("")
        problems.append(f"{path}:{line}: {key or '(top level)'}: {msg}" if line else f"{path}: {key}: {msg}")

    items = data.get("claims") if isinstance(data, dict) else data
    prefix = "claims" if isinstance(data, dict) else ""
    if isinstance(data, dict):
        for k in data:
            if k != "claims":
                fail(str(k), "unknown top-level key (expected only `claims:`, a list of claims)")
    if not isinstance(items, list) or not items:
        raise ClaimsError(f"{path}: expected `claims:` holding a non-empty list of claims, "
                          f"got {type(items).__name__ if items is not None else 'nothing'}")
    claims: list[Claim] = []
    for i, c in enumerate(items):
        p = f"{prefix}[{i}]"
        if not isinstance(c, dict):
            fail(p, f"expected a mapping (name, metric, subject, baseline, workload, at_least), got {c!r}")
            continue
        for k in c:
            if k not in CLAIM_KEYS:
                fail(f"{p}.{k}", f"unknown key (expected one of {', '.join(CLAIM_KEYS)})")
        name = c.get("name", f"claim {i + 1}")
        if not isinstance(name, str):
            fail(f"{p}.name", f"expected a string, got {name!r}")
        metric = c.get("metric")
        if metric is None:
            fail(p, "missing key `metric`")
        elif ALIASES.get(metric, metric) not in METRICS:
            fail(f"{p}.metric", f"expected one of {', '.join(METRICS)}, got {metric!r}")
        else:
            metric = ALIASES.get(metric, metric)
        sels = {}
        for side in ("subject", "baseline"):
            s = c.get(side)
            if s is None:
                fail(p, f"missing key `{side}` (a selector such as {{backend: torch-cpu}})")
            elif not isinstance(s, dict) or not s:
                fail(f"{p}.{side}", f"expected a non-empty mapping with keys from {', '.join(SELECTOR_KEYS)}, "
                     f"got {s!r}")
            else:
                for k, v in s.items():
                    if k not in SELECTOR_KEYS:
                        fail(f"{p}.{side}.{k}", f"unknown selector key (expected one of {', '.join(SELECTOR_KEYS)})")
                    elif not isinstance(v, (str, int)) or isinstance(v, bool):
                        fail(f"{p}.{side}.{k}", f"expected a string, got {v!r}")
                sels[side] = {k: str(v) for k, v in s.items()}
        w = c.get("workload")
        if w is None:
            fail(p, "missing key `workload` (model, batch, prompt_len, gen_len)")
            w = {}
        elif not isinstance(w, dict):
            fail(f"{p}.workload", f"expected a mapping with keys {', '.join(WORKLOAD_KEYS)}, got {w!r}")
            w = {}
        for k in w:
            if k not in WORKLOAD_KEYS:
                fail(f"{p}.workload.{k}", f"unknown key (expected one of {', '.join(WORKLOAD_KEYS)})")
        for k in ("model", "batch", "prompt_len", "gen_len"):
            if isinstance(c.get("workload"), dict) and k not in w:
                fail(f"{p}.workload", f"missing key `{k}`")
        if "model" in w and not isinstance(w["model"], str):
            fail(f"{p}.workload.model", f"expected a model name, got {w['model']!r}")
        if "batch" in w and w["batch"] != "best" and not (isinstance(w["batch"], int) and not isinstance(w["batch"], bool)
                                                          and w["batch"] >= 1):
            fail(f"{p}.workload.batch", f"expected a batch size >= 1 or \"best\", got {w['batch']!r}")
        for k in ("prompt_len", "gen_len"):
            if k in w and not (isinstance(w[k], int) and not isinstance(w[k], bool) and w[k] >= 1):
                fail(f"{p}.workload.{k}", f"expected an integer >= 1, got {w[k]!r}")
        if "at_least" in c and "factor" in c:
            fail(f"{p}.factor", "give either `at_least: N` or `factor: \"at least Nx\"`, not both")
        factor = None
        if "at_least" in c:
            factor = float(c["at_least"]) if _num(c["at_least"]) else None
            if factor is None or factor <= 0:
                fail(f"{p}.at_least", f"expected a number > 0 (the factor, e.g. 100 for \"at least 100x\"), "
                     f"got {c['at_least']!r}")
        elif "factor" in c:
            factor = _parse_factor(c["factor"])
            if factor is None or factor <= 0:
                fail(f"{p}.factor", f"expected \"at least Nx\" or a number > 0, got {c['factor']!r}")
        else:
            fail(p, "missing key `at_least` (the factor, e.g. `at_least: 100` for \"at least 100x\")")
        req = c.get("required", False)
        if not isinstance(req, bool):
            fail(f"{p}.required", f"expected true or false, got {req!r}")
        energy = c.get("energy", "gross")
        if energy not in ("gross", "net"):
            fail(f"{p}.energy", f"expected gross or net, got {energy!r}")
        scope = c.get("scope")
        if scope is not None and not isinstance(scope, str):
            fail(f"{p}.scope", f"expected a meter scope such as gpu-board or wall, got {scope!r}")
        if not problems:
            claims.append(Claim(name=name, metric=metric, subject=sels["subject"], baseline=sels["baseline"],
                                workload=dict(w), at_least=factor, required=req, energy=energy, scope=scope,
                                where=f"{path}:{lines.get(p, '?')}"))
    if problems:
        raise ClaimsError("; ".join(problems) if len(problems) < 2 else
                          f"{len(problems)} problems: " + "; ".join(problems))
    return claims


# --- verdicts ---------------------------------------------------------------------------------

SUPPORTED, REFUTED, INCONCLUSIVE = "SUPPORTED", "REFUTED", "INCONCLUSIVE"


@dataclass
class Comparison:
    subject: Cell
    baseline: Cell
    subject_value: MetricValue
    baseline_value: MetricValue
    ratio: stats.Ratio


@dataclass
class Verdict:
    claim: Claim
    verdict: str
    comparison: Comparison | None = None
    best_baseline: Comparison | None = None
    best_baseline_verdict: str | None = None
    caveats: list[str] = field(default_factory=list)
    reason: str = ""

    @property
    def failed_required(self) -> bool:
        return self.claim.required and self.verdict == REFUTED


def _match_selector(c: Cell, sel: dict) -> bool:
    for k, v in sel.items():
        if k == "run":
            if v not in (c.run_id, c.run_dir.name, str(c.run_dir)) and Path(v).resolve() != c.run_dir.resolve():
                return False
        elif k == "precision" or k == "dtype":
            if v not in (str(c.record.get("precision")), str(c.record.get("dtype"))):
                return False
        elif k == "host":
            if v != c.host:
                return False
        elif str(c.record.get(k)) != v:
            return False
    return True


def _match_workload(c: Cell, w: dict, any_batch: bool = False) -> bool:
    r = c.record
    for k, v in w.items():
        if k == "batch" and (any_batch or v == "best"):
            continue
        if k == "scenario":
            if r.get("scenario", "offline") != v:
                return False
        elif r.get(k) != v:
            return False
    return True


def _better(metric: str, a: float, b: float) -> bool:
    return a > b if METRICS[metric].higher_is_better else a < b


def best_cell(cells: list[Cell], metric: str, kind: str = "gross", scope: str | None = None) -> Cell | None:
    """The valid cell with the best median of the metric (invalid and failed cells are never best)."""
    best, best_v = None, None
    for c in cells:
        if not c.ok:
            continue
        s = metric_value(c, metric, kind, scope).summary()
        if s.median is None:
            continue
        if best is None or _better(metric, s.median, best_v):
            best, best_v = c, s.median
    return best


def _verdict_of(r: stats.Ratio, factor: float) -> str:
    if r.ci_low is None or r.ci_high is None:
        return INCONCLUSIVE
    if r.ci_low >= factor:
        return SUPPORTED
    if r.ci_high < factor:
        return REFUTED
    return INCONCLUSIVE


def fmt_ratio(r: stats.Ratio | None) -> str:
    if r is None or r.ratio is None:
        return "-"
    return f"{stats.fmt_num(r.ratio, 3)}x {stats.fmt_ci(r.ci_low, r.ci_high)}"


def _compare(metric: str, s: Cell, b: Cell, kind: str, scope: str | None) -> Comparison:
    sv, bv = metric_value(s, metric, kind, scope), metric_value(b, metric, kind, scope)
    return Comparison(s, b, sv, bv, improvement(sv, bv) if sv.n and bv.n else stats.Ratio(
        None, None, None, sv.n, bv.n, stats.CONFIDENCE, "independent", "median"))


def evaluate(claim: Claim, cells: list[Cell]) -> Verdict:
    """The verdict on one claim over the given cells, with every caveat that limits it."""
    metric, kind, scope = claim.metric, claim.energy, claim.scope
    mdef = METRICS[metric]
    batch = claim.workload.get("batch")
    caveats: list[str] = []

    def side(sel: dict, label: str) -> tuple[Cell | None, list[Cell], str | None]:
        pool = [c for c in cells if _match_selector(c, sel) and _match_workload(c, claim.workload, any_batch=True)]
        if not pool:
            return None, pool, f"no measured cell matches the {label} ({_sel(sel)}; {_wl(claim.workload)})"
        bad = [c for c in pool if not c.ok]
        if bad:
            caveats.append(f"{label}: {len(bad)} cell(s) excluded as {'/'.join(sorted({c.status_label for c in bad}))}: "
                           + ", ".join(c.short for c in bad))
        if batch == "best":
            c = best_cell(pool, metric, kind, scope)
            if c is None:
                return None, pool, f"the {label} has no valid cell with a {metric} figure"
            return c, pool, None
        at = [c for c in pool if c.record.get("batch") == batch]
        if not at:
            return None, pool, f"the {label} was not measured at batch {batch}"
        if len(at) > 1:
            return None, pool, (f"the {label} selector matches {len(at)} cells ({', '.join(c.short for c in at)}): "
                                "add run, backend or precision to it")
        return at[0], pool, None

    s_cell, _, s_err = side(claim.subject, "subject")
    b_cell, b_pool, b_err = side(claim.baseline, "baseline")
    v = Verdict(claim, INCONCLUSIVE, caveats=caveats)
    if s_err or b_err:
        v.reason = "; ".join(e for e in (s_err, b_err) if e)
        return v

    comp = _compare(metric, s_cell, b_cell, kind, scope)
    v.comparison = comp
    for c, val, label in ((s_cell, comp.subject_value, "subject"), (b_cell, comp.baseline_value, "baseline")):
        if not c.ok:
            caveats.append(f"{label} cell {c.short} is {c.status_label}"
                           + (" (failed the accuracy gate)" if c.invalid else "") + ": it cannot support a claim")
        if val.n == 0:
            caveats.append(f"{label} has no {metric} figure: {val.reason}")
    _caveats(claim, comp, caveats)

    # the baseline at its best measured configuration (any batch)
    best_b = best_cell(b_pool, metric, kind, scope)
    if best_b is not None:
        v.best_baseline = comp if best_b is b_cell else _compare(metric, s_cell, best_b, kind, scope)
        v.best_baseline_verdict = _verdict_of(v.best_baseline.ratio, claim.at_least)
        if best_b is not b_cell:
            caveats.append(
                f"the baseline does best at batch {best_b.record.get('batch')} ({best_b.short}), not batch "
                f"{b_cell.record.get('batch')}: against that configuration the ratio is "
                f"{fmt_ratio(v.best_baseline.ratio)}, which would be {v.best_baseline_verdict}")

    measured = _verdict_of(comp.ratio, claim.at_least)
    if not (s_cell.ok and b_cell.ok):
        v.reason = "a compared cell is invalid or failed"
    elif comp.ratio.ratio is None:
        v.reason = "no ratio could be computed"
    elif comp.ratio.ci_low is None:
        v.reason = "no confidence interval (fewer than 2 repetitions on both sides)"
    elif mdef.energy and (is_estimate(comp.subject_value.meter) or is_estimate(comp.baseline_value.meter)):
        v.reason = (f"energy is an estimate, not a measurement: the measured ratio alone would be {measured}")
    else:
        v.verdict = measured
        lo, hi = comp.ratio.ci_low, comp.ratio.ci_high
        v.reason = {SUPPORTED: f"interval lower bound {lo:.3g} >= {claim.at_least:g}",
                    REFUTED: f"interval upper bound {hi:.3g} < {claim.at_least:g}",
                    INCONCLUSIVE: f"interval [{lo:.3g}, {hi:.3g}] contains {claim.at_least:g}"}[measured]
    return v


def _caveats(claim: Claim, comp: Comparison, out: list[str]) -> None:
    s, b = comp.subject, comp.baseline
    mdef = METRICS[claim.metric]
    if mdef.energy:
        sm, bm = comp.subject_value.meter, comp.baseline_value.meter
        if sm and bm and sm.get("scope") != bm.get("scope"):
            out.append(f"energy scopes differ: subject measured at {sm.get('scope')} ({sm.get('meter')}), baseline at "
                       f"{bm.get('scope')} ({bm.get('meter')}); a wall meter also counts power supply, fans and "
                       "host, a board meter only the card: the ratio is not like for like")
        for label, m in (("subject", sm), ("baseline", bm)):
            if not m:
                continue
            if is_estimate(m):
                out.append(f"{label} energy is an ESTIMATE ({m.get('reason') or m.get('meter')}), not a measurement")
            elif m.get("quality") == "short-window":
                out.append(f"{label} energy window too short for its meter ({m.get('meter')}: "
                           f"{m.get('reason') or 'too few meter updates'})")
            for w in m.get("warnings") or []:
                out.append(f"{label} energy warning: {w}")
        out.append("energy intervals reflect repetition-to-repetition timing only (one meter window per cell), "
                   "not meter error")
    if s.precision != b.precision:
        out.append(f"precisions differ: subject {s.precision}, baseline {b.precision} (lower precision does less "
                   "work per token; check the accuracy columns)")
    sa, ba = s.record.get("accuracy") or {}, b.record.get("accuracy") or {}
    if sa.get("passed") is not True or ba.get("passed") is not True:
        out.append(f"accuracy not established on both sides: subject {_acc(sa)}, baseline {_acc(ba)}")
    elif sa.get("rel_err") and ba.get("rel_err") and max(sa["rel_err"], ba["rel_err"]) > 10 * min(
            sa["rel_err"], ba["rel_err"]) and max(sa["rel_err"], ba["rel_err"]) > 1e-4:
        out.append(f"accuracy differs: subject {_acc(sa)}, baseline {_acc(ba)}")
    broof, sroof = b.record.get("roofline") or {}, s.record.get("roofline") or {}
    if broof.get("decode_pct") is None:
        out.append(f"baseline roofline unknown (no calibration for {b.record.get('device')} on {b.host}: run "
                   "`harness calibrate` there): cannot tell whether the baseline is tuned")
    elif broof["decode_pct"] < ROOFLINE_FLOOR_PCT:
        out.append(f"baseline reaches only {broof['decode_pct']:.0f} % of its decode roofline (< "
                   f"{ROOFLINE_FLOOR_PCT:.0f} %): an untuned baseline inflates any ratio")
    for label, roof in (("subject", sroof), ("baseline", broof)):
        if roof.get("suspect"):
            out.append(f"{label} is above 100 % of its roofline (SUSPECT): the measurement or the work model is wrong")
    for label, val in (("subject", comp.subject_value), ("baseline", comp.baseline_value)):
        c = s if label == "subject" else b
        n = len(_samples(c.record, "e2e_s")) if mdef.energy else val.n
        if n < stats.MIN_REPETITIONS:
            out.append(f"{label} has {n} repetition(s) (< {stats.MIN_REPETITIONS}): its interval does not hold its "
                       f"coverage; run at least {stats.DEFAULT_REPETITIONS}")


def _acc(a: dict) -> str:
    if a.get("passed") is True:
        return f"passed (rel err {a.get('rel_err', float('nan')):.1e})"
    if a.get("passed") is False:
        return f"FAILED (rel err {a.get('rel_err', float('nan')):.1e} > {a.get('tolerance', float('nan')):.0e})"
    return str(a.get("status") or "not checked")


def verify(claims: list[Claim], cells: list[Cell]) -> list[Verdict]:
    return [evaluate(c, cells) for c in claims]


def exit_code(verdicts: list[Verdict], strict: bool = False) -> int:
    """1 when a required claim is REFUTED (or, with strict, not SUPPORTED); else 0."""
    for v in verdicts:
        if v.claim.required and (v.verdict == REFUTED or (strict and v.verdict != SUPPORTED)):
            return 1
    return 0


def verdicts_markdown(verdicts: list[Verdict], heading: str = "#") -> str:
    out = [f"{heading} Claim verdicts", ""]
    out.append("| # | claim | metric | factor | measured ratio [95% CI] | verdict | required |")
    out.append("|---:|---|---|---:|---:|---|---|")
    for i, v in enumerate(verdicts, 1):
        r = v.comparison.ratio if v.comparison else None
        out.append(f"| {i} | {_md(v.claim.name)} | {v.claim.metric} | >= {v.claim.at_least:g}x | {fmt_ratio(r)} | "
                   f"**{v.verdict}** | {'yes' if v.claim.required else 'no'} |")
    for i, v in enumerate(verdicts, 1):
        out += ["", f"{heading}# {i}. {_md(v.claim.name)}: {v.verdict}", ""]
        out += verdict_lines(v)
    return "\n".join(out) + "\n"


def verdict_lines(v: Verdict) -> list[str]:
    """Markdown bullet lines describing one verdict (also used in the HTML report)."""
    c = v.claim
    m = METRICS[c.metric]
    out = [f"- Claim: {_md(c.describe())} ({c.where})", f"- Verdict: **{v.verdict}** ({_md(v.reason)})"]
    if v.comparison:
        comp = v.comparison
        for label, cell, val in (("Subject", comp.subject, comp.subject_value),
                                 ("Baseline", comp.baseline, comp.baseline_value)):
            s = val.summary()
            src = ""
            if val.meter:
                src = f"; energy: {val.meter.get('meter')}, {val.meter.get('method')}, {val.meter.get('scope')}" + (
                    " (ESTIMATE)" if is_estimate(val.meter) else "")
            out.append(f"- {label}: {cell.short} on {cell.device_label}: {c.metric} median "
                       f"{_g(s.median)} {m.unit} {stats.fmt_ci(s.ci_low, s.ci_high)}, n={s.n}{src}")
        direction = "subject / baseline" if m.higher_is_better else "baseline / subject"
        out.append(f"- Measured improvement ({direction}): {fmt_ratio(comp.ratio)}; claimed at least "
                   f"{c.at_least:g}x")
    if v.best_baseline:
        bb = v.best_baseline
        out.append(f"- Best baseline configuration measured: {bb.baseline.short} ({c.metric} median "
                   f"{_g(bb.baseline_value.summary().median)} {m.unit}); ratio against it "
                   f"{fmt_ratio(bb.ratio)} -> {v.best_baseline_verdict}")
    out.append("- Caveats:" if v.caveats else "- Caveats: none found")
    out += [f"  - {_md(x)}" for x in v.caveats]
    return out


def _g(x: float | None) -> str:
    return stats.fmt_num(x, 4)


def _md(s: str) -> str:
    return str(s).replace("|", "\\|")
