"""Verdicts: is "X is at least N times better than Y" supported by what was measured?

The measured ratio is an *improvement factor*: subject / baseline for metrics where
higher is better (tokens/s, tokens per joule), baseline / subject where lower is better
(J/token, TTFT, TPOT). So "at_least: 100" on j_per_token means the subject spends at
most 1/100 of the baseline's joules per token.

Verdict, from the bootstrap interval of that ratio (harness.stats):
  SUPPORTED     the interval's lower bound >= factor
  REFUTED       the interval's upper bound <  factor
  INCONCLUSIVE  otherwise, and whenever a side is missing, failed or invalid (accuracy
                gate), above 100 % of the roofline that bounds the claim's metric (faster
                than the hardware allows: a measurement error, never a win), has no
                interval, or its energy figure is an estimate (an estimate can neither
                support nor refute a measured claim; the would-be verdict is shown as a
                caveat). A failed, invalid or above-roofline side gets no ratio verdict at
                all, not even against the baseline's best configuration.
The roofline of a metric is the decode one for decode figures (decode_tps, tpot_s,
j_per_token, tokens_per_joule ...), the prefill one for prefill_tps, ttft_s and
j_per_prompt_token, both for e2e_s (harness.figures.MetricDef.rooflines).
Every verdict lists its caveats: energy scopes that differ, precisions or accuracy that
differ, a baseline under 50 % of the metric's roofline (or with no roofline at all),
meter windows too short, estimates, fewer than 5 repetitions, invalid cells. It also
reports the baseline's best measured configuration (the batch at which it does best on
the claim's metric) and the ratio against that, since a claim against batch 1 is not a
claim against the hardware.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from harness import stats
from harness.cells import ResultCell
from harness.claims import Claim, Selector, Workload
from harness.figures import METRICS, MetricValue, improvement, is_estimate, metric_value, samples
from harness.roofline import SIDES, side_suspect
from harness.bounds import WEIGHT_BYTES, Bound, BoundWorkload, bound, bound_at, fmt_j, fmt_tps, terms_text
from workloads.zoo import ZOO

SUPPORTED, REFUTED, INCONCLUSIVE = "SUPPORTED", "REFUTED", "INCONCLUSIVE"
# the claimed factor exceeds what physics allows (harness.bounds): refuted before any measurement
IMPLAUSIBLE = "IMPLAUSIBLE"
ROOFLINE_FLOOR_PCT = 50.0  # a baseline under this share of its roofline is "far under" it


@dataclass
class ClaimComparison:
    """The claim's metric on one subject cell and one baseline cell, and their ratio."""

    subject: ResultCell
    baseline: ResultCell
    subject_value: MetricValue
    baseline_value: MetricValue
    ratio: stats.Ratio
    # a baseline that is no cell of these runs (a figure measured outside the project): what
    # it is, shown instead of the baseline cell (which then repeats the subject's)
    baseline_text: Optional[str] = None


@dataclass
class Verdict:
    claim: Claim
    verdict: str
    comparison: Optional[ClaimComparison] = None
    best_baseline: Optional[ClaimComparison] = None
    best_baseline_verdict: Optional[str] = None
    caveats: list[str] = field(default_factory=list)
    reason: str = ""
    # why the comparison (or the one against the best baseline) gets no ratio verdict: a side
    # that failed, failed the accuracy gate, or is above the metric's roofline; None when judged
    blocked: Optional[str] = None
    best_baseline_blocked: Optional[str] = None
    bound: Optional["BoundCheck"] = None  # what physics allows (harness.bounds), when a catalog device is known
    # a side of the claim matched no measured cell at all (wrong selector, workload not run):
    # a required claim with no data fails the gate rather than passing as INCONCLUSIVE
    no_data: bool = False

    @property
    def failed_required(self) -> bool:
        return self.claim.required and (self.verdict in (REFUTED, IMPLAUSIBLE) or self.no_data)


def _match_selector(c: ResultCell, sel: Selector) -> bool:
    if sel.external is not None or sel.catalog_only:
        return False  # a figure from outside the runs, or a device judged by its catalog figures alone
    for k, v in sel.measured_keys().items():
        if k == "run":
            if v not in (c.run_id, c.run_dir.name, str(c.run_dir)) and Path(v).resolve() != c.run_dir.resolve():
                return False
        elif k in ("precision", "dtype"):
            if v not in (str(c.record.precision), str(c.record.dtype)):
                return False
        elif k == "host":
            if v != c.host:
                return False
        elif str(getattr(c.record, k)) != v:  # backend, backend_type, device
            return False
    return True


def _match_workload(c: ResultCell, w: Workload) -> bool:
    """Same model, lengths and (when the claim names one) scenario; any batch."""
    r = c.record
    return (r.model == w.model and r.prompt_len == w.prompt_len and r.gen_len == w.gen_len
            and (w.scenario is None or r.scenario == w.scenario))


def _better(metric: str, a: float, b: float) -> bool:
    return a > b if METRICS[metric].higher_is_better else a < b


def best_cell(cells: list[ResultCell], metric: str, kind: str = "gross",
              scope: Optional[str] = None) -> Optional[ResultCell]:
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


def _roofline_at(roof: dict, side: str) -> str:
    pct = roof.get(f"{side}_pct")
    return f"at {pct:.0f} %" if pct is not None else "above 100 %"


def _blocker(metric: str, subject: ResultCell, baseline: ResultCell, claim: Optional[Claim] = None) -> Optional[str]:
    """Why no ratio of these two cells can be judged (None when it can): a side that failed,
    failed the accuracy gate, is faster than the roofline bounding the metric allows, or beats
    its catalog device's physical bound (above its tok/s bound, below its J/token floor)."""
    why = []
    if claim is not None and "decode" in METRICS[metric].rooflines:
        for label, c, sel in (("subject", subject, claim.subject), ("baseline", baseline, claim.baseline)):
            if c.ok:
                why += [f"{label} {r}" for r in bound_suspect(c, _device_of(c, sel, claim), claim.energy, claim.scope)]
    for label, c in (("subject", subject), ("baseline", baseline)):
        if not c.ok:
            why.append(f"{label} cell {c.short} is {c.status_label}"
                       + (" (failed the accuracy gate)" if c.invalid else "")
                       + ": its figures can neither support nor refute a claim")
            continue
        roof = c.record.roofline or {}
        for side in METRICS[metric].rooflines:
            if side_suspect(roof, side):
                why.append(f"{label} {_roofline_at(roof, side)} of its {side} roofline: faster than the "
                           "hardware allows; check the measurement")
    return "; ".join(why) or None


def _no_verdict(why: Optional[str], main_why: Optional[str]) -> str:
    """Why the ratio against the best baseline gets no verdict, said once per verdict."""
    return "no verdict, for the verdict's reason" if why == main_why else f"no verdict: {why}"


def fmt_ratio(r: Optional[stats.Ratio]) -> str:
    if r is None or r.ratio is None:
        return "-"
    return f"{stats.fmt_num(r.ratio, 3)}x {stats.fmt_ci(r.ci_low, r.ci_high)}"


def shown_ratio(v: "Verdict") -> str:
    """A verdict's ratio as a summary table shows it: flagged when a side blocks its judgement;
    with no measured ratio, what the physical bound allows."""
    text = fmt_ratio(v.comparison.ratio if v.comparison else None)
    if text == "-" and v.bound is not None and v.bound.allowed is not None:
        return f"bound allows <= {v.bound.allowed:.3g}x"
    return f"{text} (not judged)" if v.blocked and text != "-" else text


def _compare(metric: str, s: ResultCell, b: ResultCell, kind: str, scope: Optional[str]) -> ClaimComparison:
    sv, bv = metric_value(s, metric, kind, scope), metric_value(b, metric, kind, scope)
    return ClaimComparison(s, b, sv, bv, improvement(sv, bv) if sv.n and bv.n else stats.Ratio(
        None, None, None, sv.n, bv.n, stats.CONFIDENCE, "independent", "median"))


def evaluate(claim: Claim, cells: list[ResultCell]) -> Verdict:
    """The verdict on one claim over the given cells, with every caveat that limits it; a
    claimed factor beyond what the subject's physical floor allows is IMPLAUSIBLE."""
    if claim.subject.catalog_only or claim.subject.external is not None or claim.baseline.external is not None \
            or claim.baseline.catalog_only:
        return _evaluate_by_bounds(claim, cells)
    v = _evaluate_measured(claim, cells)
    if v.comparison is not None:
        v.bound = _bound_of_measured(claim, v.comparison)
        _apply_bound(v)
    return v


def _evaluate_measured(claim: Claim, cells: list[ResultCell]) -> Verdict:
    """The verdict from the measured ratio of two sets of cells (the verdict before bounds)."""
    metric, kind, scope = claim.metric, claim.energy, claim.scope
    batch = claim.workload.batch
    caveats: list[str] = []

    def side(sel: Selector, label: str, match_precision: Optional[str] = None) \
            -> tuple[Optional[ResultCell], list[ResultCell], Optional[str]]:
        pool = [c for c in cells if _match_selector(c, sel) and _match_workload(c, claim.workload)]
        if not pool:
            return None, pool, (f"no measured cell matches the {label} ({sel.describe()}; "
                                f"{claim.workload.describe()})")
        if match_precision is not None and len({c.precision for c in pool}) > 1:
            # like with like: an fp8 subject against the baseline's fp8 cells where it has them,
            # so the claim cannot win by moving fewer bytes per weight (issue 18)
            matched = [c for c in pool if c.precision == match_precision]
            if matched:
                others = sorted({str(c.precision) for c in pool} - {match_precision})
                caveats.append(f"{label} matched to the subject's precision {match_precision} "
                               f"({len(pool) - len(matched)} cell(s) at {', '.join(others)} set aside)")
                pool = matched
        bad = [c for c in pool if not c.ok]
        if bad:
            caveats.append(f"{label}: {len(bad)} cell(s) excluded as {'/'.join(sorted({c.status_label for c in bad}))}: "
                           + ", ".join(c.short for c in bad))
        if batch == "best":
            c = best_cell(pool, metric, kind, scope)
            if c is None:
                return None, pool, f"the {label} has no valid cell with a {metric} figure"
            return c, pool, None
        at = [c for c in pool if c.record.batch == batch]
        if not at:
            return None, pool, f"the {label} was not measured at batch {batch}"
        if len(at) > 1:
            return None, pool, (f"the {label} selector matches {len(at)} cells ({', '.join(c.short for c in at)}): "
                                "add run, backend or precision to it")
        return at[0], pool, None

    s_cell, s_pool, s_err = side(claim.subject, "subject")
    pinned = any(k in ("precision", "dtype") for k in claim.baseline.measured_keys())
    b_cell, b_pool, b_err = side(claim.baseline, "baseline",
                                 None if pinned or s_cell is None else s_cell.precision)
    v = Verdict(claim, INCONCLUSIVE, caveats=caveats)
    if s_err or b_err:
        v.reason = "; ".join(e for e in (s_err, b_err) if e)
        v.no_data = not s_pool or not b_pool
        return v

    if not pinned and s_cell.precision != b_cell.precision:
        caveats.append(f"the baseline has no {s_cell.precision} cell to match the subject's precision: "
                       f"measure it at {s_cell.precision} for a like-for-like ratio")
    comp = _compare(metric, s_cell, b_cell, kind, scope)
    v.comparison = comp
    for c, val, label in ((s_cell, comp.subject_value, "subject"), (b_cell, comp.baseline_value, "baseline")):
        if not c.ok:
            caveats.append(f"{label} cell {c.short} is {c.status_label}"
                           + (" (failed the accuracy gate)" if c.invalid else "") + ": it cannot support a claim")
        if val.n == 0:
            caveats.append(f"{label} has no {metric} figure: {val.reason}")
    caveats += _caveats(claim, comp)

    # the baseline at its best measured configuration (any batch)
    best_b = best_cell(b_pool, metric, kind, scope)
    if best_b is not None:
        v.best_baseline = comp if best_b is b_cell else _compare(metric, s_cell, best_b, kind, scope)
        v.best_baseline_blocked = _blocker(metric, s_cell, best_b, claim)
        if v.best_baseline_blocked is None:
            v.best_baseline_verdict = _verdict_of(v.best_baseline.ratio, claim.at_least)
        if best_b is not b_cell:
            caveats.append(
                f"the baseline does best at batch {best_b.record.batch} ({best_b.short}), not batch "
                f"{b_cell.record.batch}: against that configuration the ratio is {fmt_ratio(v.best_baseline.ratio)}"
                + (f", which would be {v.best_baseline_verdict}" if v.best_baseline_verdict else
                   f" ({_no_verdict(v.best_baseline_blocked, v.blocked)})"))

    measured = _verdict_of(comp.ratio, claim.at_least)
    v.blocked = _blocker(metric, s_cell, b_cell, claim)
    if v.blocked:
        v.reason = v.blocked
    elif comp.ratio.ratio is None:
        v.reason = "no ratio could be computed"
    elif comp.ratio.ci_low is None:
        v.reason = "no confidence interval (fewer than 2 repetitions on both sides)"
    elif METRICS[metric].energy and any(m is not None and m.quality == "speed-mismatch"
                                        for m in (comp.subject_value.meter, comp.baseline_value.meter)):
        # the energy was measured on work that ran at another speed than the timed figures (harness.energy)
        v.reason = ("energy measured on work that ran at another speed than the timed repetitions (" + "; ".join(
            m.reason or "" for m in (comp.subject_value.meter, comp.baseline_value.meter)
            if m is not None and m.quality == "speed-mismatch") + f"): the measured ratio alone would be {measured}")
    elif METRICS[metric].energy and (is_estimate(comp.subject_value.meter) or is_estimate(comp.baseline_value.meter)):
        v.reason = f"energy is an estimate, not a measurement: the measured ratio alone would be {measured}"
    elif METRICS[metric].energy and any(m is not None and m.quality == "clock-skew"
                                        for m in (comp.subject_value.meter, comp.baseline_value.meter)):
        v.reason = ("energy read on a meter whose clock is off this host's and was not corrected "
                    f"(clock_offset_s: auto corrects it): the measured ratio alone would be {measured}")
    else:
        v.verdict = measured
        lo, hi = comp.ratio.ci_low, comp.ratio.ci_high
        v.reason = {SUPPORTED: f"interval lower bound {lo:.3g} >= {claim.at_least:g}",
                    REFUTED: f"interval upper bound {hi:.3g} < {claim.at_least:g}",
                    INCONCLUSIVE: f"interval [{lo:.3g}, {hi:.3g}] contains {claim.at_least:g}"}[measured]
    return v


def _caveats(claim: Claim, comp: ClaimComparison) -> list[str]:
    out: list[str] = []
    s, b = comp.subject, comp.baseline
    mdef = METRICS[claim.metric]
    if mdef.energy:
        sm, bm = comp.subject_value.meter, comp.baseline_value.meter
        if sm and bm and sm.scope != bm.scope:
            out.append(f"energy scopes differ: subject measured at {sm.scope} ({sm.meter}), baseline at "
                       f"{bm.scope} ({bm.meter}); a wall meter also counts power supply, fans and "
                       "host, a board meter only the card: the ratio is not like for like")
        for label, m in (("subject", sm), ("baseline", bm)):
            if not m:
                continue
            if m.is_estimate:
                out.append(f"{label} energy is an ESTIMATE ({m.reason or m.meter}), not a measurement")
            elif m.quality == "short-window":
                out.append(f"{label} energy window too short for its meter ({m.meter}: "
                           f"{m.reason or 'too few meter updates'})")
            elif m.quality == "clock-skew":
                out.append(f"{label} energy read on a meter clock that is off ({m.meter}: {m.reason})")
            elif m.quality == "speed-mismatch":
                out.append(f"{label} energy measured at another speed than the timed repetitions ({m.meter}: "
                           f"{m.reason})")
            for w in m.warnings:
                out.append(f"{label} energy warning: {w}")
        out.append("energy intervals reflect repetition-to-repetition timing only (one meter window per cell), "
                   "not meter error")
    if s.precision != b.precision:
        out.append(f"precisions differ: subject {s.precision}, baseline {b.precision} (lower precision does less "
                   "work per token; check the accuracy columns)")
    sa, ba = s.record.accuracy, b.record.accuracy
    if sa.get("passed") is not True or ba.get("passed") is not True:
        out.append(f"accuracy not established on both sides: subject {_acc(sa)}, baseline {_acc(ba)}")
    elif sa.get("rel_err") and ba.get("rel_err") and max(sa["rel_err"], ba["rel_err"]) > 10 * min(
            sa["rel_err"], ba["rel_err"]) and max(sa["rel_err"], ba["rel_err"]) > 1e-4:
        out.append(f"accuracy differs: subject {_acc(sa)}, baseline {_acc(ba)}")
    out += _roofline_caveats(claim.metric, s, b)
    for label, c, val in (("subject", s, comp.subject_value), ("baseline", b, comp.baseline_value)):
        # an energy figure has one sample per repetition of the request time it is spread over
        n = len(samples(c.record, "e2e_s")) if mdef.energy else val.n
        if n < stats.MIN_REPETITIONS:
            out.append(f"{label} has {n} repetition(s) (< {stats.MIN_REPETITIONS}): its interval does not hold its "
                       f"coverage; run at least {stats.DEFAULT_REPETITIONS}")
    return out


def _roofline_caveats(metric: str, s: ResultCell, b: ResultCell) -> list[str]:
    """Each roofline named by its side: the baseline's share of the roofline(s) bounding the
    metric, and any side of either cell above 100 % (the metric's own side blocks the verdict;
    the other side is named so that the reader knows the cell has a suspect figure)."""
    out: list[str] = []
    sides = METRICS[metric].rooflines
    broof, sroof = b.record.roofline or {}, s.record.roofline or {}
    unknown = [side for side in sides if broof.get(f"{side}_pct") is None]
    # calibrated, but the weights fit the last-level cache: there is no DRAM roofline to be
    # short of, and sending the reader to calibrate again would be wrong
    resident = [side for side in unknown if broof.get(f"{side}_cache_resident")]
    unknown = [side for side in unknown if side not in resident]
    if resident:
        out.append(f"baseline {' and '.join(resident)} is cache-resident (its weights fit the last-level cache, so "
                   "no DRAM roofline applies): cannot tell from a roofline whether the baseline is tuned")
    if unknown:
        out.append(f"baseline {' and '.join(unknown)} roofline unknown (no calibration for {b.record.device} on "
                   f"{b.host} gives it: run `harness calibrate` there): cannot tell whether the baseline is tuned")
    for side in sides:
        pct = broof.get(f"{side}_pct")
        if pct is not None and pct < ROOFLINE_FLOOR_PCT:
            out.append(f"baseline reaches only {pct:.0f} % of its {side} roofline (< {ROOFLINE_FLOOR_PCT:.0f} %): "
                       "an untuned baseline inflates any ratio")
    for label, roof in (("subject", sroof), ("baseline", broof)):
        for side in SIDES:
            if not side_suspect(roof, side):
                continue
            if side in sides:
                out.append(f"{label} is {_roofline_at(roof, side)} of its {side} roofline (SUSPECT): the "
                           "measurement or the work model is wrong")
            else:
                out.append(f"{label}'s {side} is {_roofline_at(roof, side)} of its {side} roofline (SUSPECT): "
                           f"{metric} is bounded by the {' and '.join(sides)} roofline, so it is still judged, "
                           f"but that cell's {side} measurement is wrong")
    return out


def _acc(a: dict) -> str:
    if a.get("passed") is True:
        return f"passed (rel err {a.get('rel_err', float('nan')):.1e})"
    if a.get("passed") is False:
        if a.get("logits_passed") is not False and a.get("reason"):  # the timed output failed, not the logits
            return f"FAILED ({a['reason']})"
        return f"FAILED (rel err {a.get('rel_err', float('nan')):.1e} > {a.get('tolerance', float('nan')):.0e})"
    return str(a.get("status") or "not checked")


def verify(claims: list[Claim], cells: list[ResultCell]) -> list[Verdict]:
    return [evaluate(c, cells) for c in claims]


def exit_code(verdicts: list[Verdict], strict: bool = False) -> int:
    """1 when a required claim is REFUTED or IMPLAUSIBLE, or matched no measured cell (or, with
    strict, is not SUPPORTED); else 0."""
    return 1 if gate_failures(verdicts, strict) else 0


def gate_failures(verdicts: list[Verdict], strict: bool = False) -> list[Verdict]:
    """The required claims that fail the gate (see exit_code), in order."""
    return [v for v in verdicts if v.failed_required or (strict and v.claim.required and v.verdict != SUPPORTED)]


# --- physical bounds (harness.bounds, harness.catalog) -----------------------------------------

#: metrics a physical bound limits: decode energy per token and decode throughput
BOUND_METRICS = ("j_per_token", "tokens_per_joule", "j_per_1k_tokens", "decode_tps")
#: meter scopes that see only part of the memory path: a package meter leaves out the DRAM,
#: a DRAM meter the compute, so a whole-device floor says nothing about them
PARTIAL_SCOPES = ("cpu-package", "dram")


@dataclass
class BoundCheck:
    """What physics allows a claim: the largest factor, and the numbers and constants that decide it."""

    allowed: Optional[float]  # the largest improvement factor the subject's bound allows; None: unknown
    subject: str  # the subject's bound, with its terms
    baseline: str  # the baseline figure it is held against, and where it comes from
    constants: list[str] = field(default_factory=list)  # catalog constants used, with their sources
    catalog_only: bool = False  # no subject measured: the verdict rests on the catalog alone
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        allowed = f"at most {self.allowed:.3g}x" if self.allowed is not None else "unknown (no bound for this metric)"
        out = [f"Physical bound: the subject can be {allowed} better: baseline {self.baseline}; subject {self.subject}"]
        if self.catalog_only:
            out.append("No subject was measured: this verdict rests on the catalog only (harness.catalog figures "
                       "and the work model of harness.bounds)")
        out += [f"Constant: {c}" for c in self.constants]
        return out + self.notes


def _catalog(claim: Claim):
    from harness.catalog import shipped_catalog

    return claim.catalog if claim.catalog is not None else shipped_catalog()


def _device_of(c: ResultCell, sel: Selector, claim: Claim):
    """The catalog device a measured cell ran on: the selector's `catalog:`, else by device name."""
    from harness.catalog import device_name

    cat = _catalog(claim)
    return cat.get(sel.catalog) if sel.catalog else cat.for_name(device_name(c.record.device,
                                                                              c.meta.get("inventory") or {}))


def cell_bound(c: ResultCell, dev) -> Optional[Bound]:
    r = c.record
    args = ZOO.get(r.model)
    if dev is None or args is None or c.precision not in WEIGHT_BYTES:
        return None
    return bound(dev, BoundWorkload(args, c.precision, r.batch, r.prompt_len, r.gen_len))


def _floor(b: Bound, kind: str) -> float:
    """Net energy has idle power taken out: its floor has no idle term."""
    return b.decode.floor_j if kind == "gross" else b.decode.floor_without_idle()


def bound_suspect(c: ResultCell, dev, kind: str = "gross", scope: Optional[str] = None) -> list[str]:
    """Why a measured cell beats physics on its catalog device (empty when it does not, or when
    no catalog device is known): decode faster than the bound, or J/token below the floor.
    Like a roofline above 100 %, this is a measurement error, never a win."""
    b = cell_bound(c, dev)
    # weights in the measured cache (harness.roofline, from the calibration): no DRAM bound applies
    if b is None or (c.record.roofline or {}).get("decode_cache_resident"):
        return []
    out = []
    tps = plain_median(metric_value(c, "decode_tps").samples)
    if b.decode.tps is not None and tps is not None and tps > b.decode.tps:
        out.append(f"decodes {tps:.4g} tok/s, above the physical bound of {dev.name} ({fmt_tps(b.decode.tps)} tok/s, "
                   f"{b.decode.limit}-bound; {dev.where}) (SUSPECT): check the measurement")
    jv = metric_value(c, "j_per_token", kind, scope)
    j = plain_median(jv.samples)
    floor = _floor(b, kind)
    if j is not None and jv.meter is not None and jv.meter.scope not in PARTIAL_SCOPES and floor > 0 and j < floor:
        out.append(f"spends {fmt_j(j)}/token, below the floor of {dev.name} ({fmt_j(floor)}/token: "
                   f"{terms_text(b.decode)}) (SUSPECT): check the meter and its scope")
    return out


def plain_median(xs: list[float]) -> Optional[float]:
    """The plain median (no bootstrap: checked for every cell of a report)."""
    import statistics

    return statistics.median(xs) if xs else None


def _as_joules(metric: str, value: float) -> float:
    return {"j_per_token": value, "j_per_1k_tokens": value / 1000, "tokens_per_joule": 1 / value}[metric]


def _allowed(metric: str, kind: str, sub: Bound, base_value: float) -> Optional[float]:
    """The largest improvement factor the subject's bound allows against a baseline figure."""
    if metric == "decode_tps":
        return sub.decode.tps / base_value if sub.decode.tps is not None else None
    floor = _floor(sub, kind)
    return _as_joules(metric, base_value) / floor if floor > 0 else None


def _subject_text(metric: str, kind: str, b: Bound, how: str) -> str:
    w = b.workload
    at = f"{w.model.name} {w.precision} batch {'(large-batch limit)' if w.batch is None else w.batch}"
    if metric == "decode_tps":
        return f"{b.device.name} ({how}) at {at}: bound {fmt_tps(b.decode.tps)} tok/s ({b.decode.limit}-bound)"
    missing = [t for t in b.decode.missing if not (kind == "net" and t == "idle")]
    return (f"{b.device.name} ({how}) at {at}: floor {fmt_j(_floor(b, kind))}/token = {terms_text(b.decode)}"
            + (f"; left out as not published: {', '.join(missing)} (the floor is only lower for it)" if missing else ""))


def _constants(dev) -> list[str]:
    out = []
    for label, f in (("memory energy", dev.memory.pj_per_bit), ("MAC energy", dev.mac_pj), ("idle power", dev.idle_w),
                     ("bandwidth", dev.memory.bandwidth_gb_s)):
        if f is not None:
            unit = {"memory energy": "pJ/bit", "MAC energy": "pJ", "idle power": "W", "bandwidth": "GB/s"}[label]
            out.append(f"{dev.name} {label} {f.value:g} {unit} ({f.source})")
    return out


def _generous(metric: str, v) -> Optional[float]:
    """The end of a measured baseline's interval that allows the subject the most: a floor is
    held against the baseline at its best plausible showing for the claim."""
    s = v.summary()
    if s.median is None:
        return None
    if metric == "decode_tps" or METRICS[metric].higher_is_better:
        return s.ci_low if s.ci_low is not None else s.median
    return s.ci_high if s.ci_high is not None else s.median


def _bound_of_measured(claim: Claim, comp: ClaimComparison) -> Optional[BoundCheck]:
    """The bound check of a claim whose both sides were measured (None when no catalog device is known)."""
    if claim.metric not in BOUND_METRICS:
        return None
    if (comp.subject.record.roofline or {}).get("decode_cache_resident"):
        return None  # its weights sit in a cache: the off-chip bound says nothing about it
    dev = _device_of(comp.subject, claim.subject, claim)
    sub = cell_bound(comp.subject, dev)
    base = _generous(claim.metric, comp.baseline_value)
    if sub is None or base is None or base <= 0:
        return None
    unit = METRICS[claim.metric].unit
    return BoundCheck(_allowed(claim.metric, claim.energy, sub, base),
                      _subject_text(claim.metric, claim.energy, sub, f"catalog, {dev.where}"),
                      f"{stats.fmt_num(base, 4)} {unit} (measured: {comp.baseline.short}, the favourable end of its "
                      "interval)", _constants(dev))


def _apply_bound(v: Verdict) -> None:
    """IMPLAUSIBLE when the claimed factor exceeds what the bound allows; the measured verdict
    stays as a caveat."""
    b = v.bound
    if b is None or b.allowed is None or v.claim.at_least <= b.allowed:
        return
    v.caveats.insert(0, f"the measurements alone would give {v.verdict} ({v.reason})")
    v.verdict = IMPLAUSIBLE
    v.reason = (f"claimed {v.claim.at_least:g}x exceeds the {b.allowed:.3g}x the subject's physical bound allows "
                "against this baseline")


def _external_value(metric: str, e) -> Optional[float]:
    if metric == "decode_tps":
        return e.decode_tps
    if e.j_per_token is None:
        return None
    return {"j_per_token": e.j_per_token, "j_per_1k_tokens": 1000 * e.j_per_token,
            "tokens_per_joule": 1 / e.j_per_token}[metric]


def _pick_external(claim: Claim, name: str, batch) -> tuple[Optional[object], Optional[object], str]:
    """(the figure at the claim's batch or its best, the series' best figure, why none)."""
    m, w = claim.metric, claim.workload
    series = [e for e in claim.external if e.name == name and e.model == w.model
              and _external_value(m, e) is not None]
    if not series:
        return None, None, f"the external figure {name!r} has no {m} figure for {w.model}"
    best = max(series, key=lambda e: _external_value(m, e)) if METRICS[m].higher_is_better or m == "decode_tps" \
        else min(series, key=lambda e: _external_value(m, e))
    if batch == "best":
        return best, best, ""
    at = [e for e in series if e.batch == batch]
    return (at[0] if at else None), best, ("" if at else f"the external figure {name!r} has no entry at batch {batch}")


def _single_valid_cell(cells: list[ResultCell], sel: Selector, w, metric: str, kind: str,
                       scope: Optional[str]) -> Optional[ResultCell]:
    """The one valid cell a side of a bound-judged claim names: its best batch, or the only
    cell at the claim's batch (None when there is none, or more than one)."""
    pool = [c for c in cells if _match_selector(c, sel) and _match_workload(c, w) and c.ok]
    if w.batch == "best":
        return best_cell(pool, metric, kind, scope)
    at = [c for c in pool if c.record.batch == w.batch]
    return at[0] if len(at) == 1 else None


def _matches_any(cells: list[ResultCell], sel: Selector, w) -> bool:
    """Whether any measured cell (of any status) matches a side: none means the claim has no data."""
    return any(_match_selector(c, sel) and _match_workload(c, w) for c in cells)


def _evaluate_by_bounds(claim: Claim, cells: list[ResultCell]) -> Verdict:
    """A claim with a side that no run measured: a catalog device (judged by its bound) or a
    figure measured outside the project. IMPLAUSIBLE when the claimed factor exceeds what the
    subject's bound allows against the baseline (measured here, measured outside, or bounded);
    else judged by the measured subject where there is one, INCONCLUSIVE where there is not."""
    m, w, kind = claim.metric, claim.workload, claim.energy
    v = Verdict(claim, INCONCLUSIVE)
    if claim.subject.external is not None:
        v.reason = "the subject is an external figure: claims are judged for a measured or catalog subject"
        return v
    if m not in BOUND_METRICS:
        v.reason = (f"no physical bound for {m} (bounds cover {', '.join(BOUND_METRICS)}), and a side was not "
                    "measured in these runs")
        return v
    args = ZOO.get(w.model)
    if args is None:
        v.reason = f"model {w.model!r} is not in the zoo: no work model to bound it"
        return v
    cat = _catalog(claim)
    unit = METRICS[m].unit

    # the baseline: an external figure, a catalog bound, or measured cells
    base_prec, base_best_note = None, None
    if claim.baseline.external is not None:
        e, best, why = _pick_external(claim, claim.baseline.external, w.batch)
        if e is None:
            v.reason = why
            return v
        base_value, base_prec = _external_value(m, e), e.precision
        base_text = (f"{stats.fmt_num(base_value, 4)} {unit} at batch {e.batch} on {e.device} ({e.precision}, "
                     f"{e.energy}{', ' + e.scope if e.scope else ''}{', ' + e.stack if e.stack else ''}), MEASURED "
                     f"OUTSIDE THE PROJECT: {e.source}; one published figure, no interval")
        if e.prompt_len is None or e.gen_len is None:
            v.caveats.append("the external baseline does not state its prompt and generation lengths; the subject's "
                             f"bound uses the claim's ({w.prompt_len} / {w.gen_len})")
        if best is not e:
            base_best_note = (best, f"the baseline's best published figure is at batch {best.batch} "
                                    f"({stats.fmt_num(_external_value(m, best), 4)} {unit})")
    elif claim.baseline.catalog_only:
        bdev = cat.get(claim.baseline.catalog)
        base_prec = str(claim.baseline.precision or claim.baseline.dtype or claim.subject.precision
                        or claim.subject.dtype or "bf16")
        bb = bound_at(bdev, args, base_prec, w.batch, w.prompt_len, w.gen_len)
        f = _floor(bb, kind)
        if m == "decode_tps":
            base_value = bb.decode.tps
        else:
            base_value = None if f <= 0 else {"j_per_token": f, "j_per_1k_tokens": 1000 * f, "tokens_per_joule": 1 / f}[m]
        if not base_value:
            v.reason = f"the baseline {bdev.name} has no bound for {m} in the catalog"
            return v
        base_text = (f"{bdev.name} AS BOUNDED, not measured: {_subject_text(m, kind, bb, 'catalog')}; a real "
                     "baseline runs above its floor, so this allowance holds only for a baseline at its bound")
        v.caveats.append("neither side was measured: the verdict compares two catalog bounds")
    else:
        bc = _single_valid_cell(cells, claim.baseline, w, m, kind, claim.scope)
        if bc is None:
            v.reason = f"no single valid measured baseline cell ({claim.baseline.describe()}; {w.describe()})"
            v.no_data = not _matches_any(cells, claim.baseline, w)
            return v
        base_value = _generous(m, metric_value(bc, m, kind, claim.scope))
        if base_value is None:
            v.reason = f"the baseline {bc.short} has no {m} figure"
            return v
        base_prec = bc.precision
        base_text = f"{stats.fmt_num(base_value, 4)} {unit} (measured: {bc.short}, the favourable end of its interval)"

    # the subject: a catalog device alone, or measured cells on a known device
    if claim.subject.catalog_only:
        dev = cat.get(claim.subject.catalog)
        prec = str(claim.subject.precision or claim.subject.dtype or base_prec or "bf16")
        if prec not in WEIGHT_BYTES:
            v.reason = f"precision {prec!r} has no bytes-per-weight in harness.bounds ({', '.join(WEIGHT_BYTES)})"
            return v
        sub = bound_at(dev, args, prec, w.batch, w.prompt_len, w.gen_len)
        if base_prec and prec != base_prec:
            v.caveats.append(f"precisions differ: subject {prec}, baseline {base_prec} (fewer bytes per weight lower "
                             "the floor; check accuracy)")
        check = BoundCheck(_allowed(m, kind, sub, base_value), _subject_text(m, kind, sub, f"catalog, {dev.where}"),
                           base_text, _constants(dev), catalog_only=True)
        if w.batch != "best":
            gen = bound_at(dev, args, prec, "best", w.prompt_len, w.gen_len)
            a = _allowed(m, kind, gen, base_value)
            if a is not None:
                check.notes.append(f"Were the subject run at its best batch ({'large-batch limit' if gen.workload.batch is None else gen.workload.batch}) "
                                   f"against the baseline at batch {w.batch}, the bound would allow {a:.3g}x: not "
                                   "like for like (the baseline could batch too)")
        if base_best_note is not None:
            best, text = base_best_note
            gen = bound_at(dev, args, prec, "best", w.prompt_len, w.gen_len)
            a = _allowed(m, kind, gen, _external_value(m, best))
            check.notes.append(text + (f": against it, with the subject at its best batch, the bound allows {a:.3g}x"
                                       if a is not None else ""))
        v.bound = check
        if check.allowed is None:
            v.reason = f"the catalog gives {dev.name} no bound for {m}; nothing measured: rests on the catalog only"
        elif claim.at_least > check.allowed:
            v.verdict = IMPLAUSIBLE
            v.reason = (f"claimed {claim.at_least:g}x exceeds the {check.allowed:.3g}x that {dev.name}'s physical "
                        "bound allows against this baseline; rests on the catalog only (no subject measured)")
        else:
            v.reason = (f"within the physical bound (at most {check.allowed:.3g}x); no subject measured: rests on "
                        "the catalog only; measure the subject to judge the claim")
        return v

    # a measured subject against a baseline figure from outside these runs
    sc = _single_valid_cell(cells, claim.subject, w, m, kind, claim.scope)
    if sc is None:
        v.reason = f"no single valid measured subject cell ({claim.subject.describe()}; {w.describe()})"
        v.no_data = not _matches_any(cells, claim.subject, w)
        return v
    sv = metric_value(sc, m, kind, claim.scope)
    bv = MetricValue(m, [base_value])
    ratio = improvement(sv, bv) if sv.n else stats.Ratio(None, None, None, 0, 1, stats.CONFIDENCE, "independent",
                                                         "median")
    v.comparison = ClaimComparison(sc, sc, sv, bv, ratio, baseline_text=base_text)
    dev = _device_of(sc, claim.subject, claim)
    sub = cell_bound(sc, dev)
    if sub is not None:
        v.bound = BoundCheck(_allowed(m, kind, sub, base_value), _subject_text(m, kind, sub, f"catalog, {dev.where}"),
                             base_text, _constants(dev))
    suspect = bound_suspect(sc, dev, kind, claim.scope)
    if not sc.ok or suspect:
        v.blocked = v.reason = "; ".join(f"subject {r}" for r in suspect) or f"subject cell {sc.short} is not ok"
    elif ratio.ci_low is None:
        v.reason = "no confidence interval on the subject (fewer than 2 repetitions)"
    else:
        v.verdict = _verdict_of(ratio, claim.at_least)
        v.reason = (f"interval of the measured subject against one external figure [{ratio.ci_low:.3g}, "
                    f"{ratio.ci_high:.3g}] vs {claim.at_least:g}")
    v.caveats.append("the baseline was not measured in these runs: " + base_text)
    _apply_bound(v)
    return v


# --- as text -------------------------------------------------------------------------------

def verdicts_markdown(verdicts: list[Verdict], heading: str = "#", html_escape: bool = True) -> str:
    """The verdicts as Markdown. html_escape=False leaves `&`, `<`, `>` for a caller that escapes
    the whole text itself (the report's Document: escaping twice showed "&amp;gt;=" to readers)."""
    out = [f"{heading} Claim verdicts", ""]
    out.append("| # | claim | metric | factor | measured ratio [95% CI] | verdict | required |")
    out.append("|---:|---|---|---:|---:|---|---|")
    for i, v in enumerate(verdicts, 1):
        r = v.comparison.ratio if v.comparison else None
        out.append(f"| {i} | {_md(v.claim.name, html_escape)} | {v.claim.metric} | >= {v.claim.at_least:g}x | "
                   f"{shown_ratio(v)} | "
                   f"**{v.verdict}** | {'yes' if v.claim.required else 'no'} |")
    for i, v in enumerate(verdicts, 1):
        out += ["", f"{heading}# {i}. {_md(v.claim.name, html_escape)}: {v.verdict}", ""]
        out += verdict_lines(v, html_escape)
    return "\n".join(out) + "\n"


def verdict_lines(v: Verdict, html_escape: bool = True) -> list[str]:
    """Markdown bullet lines describing one verdict (also used in the HTML report, which
    escapes them itself: it asks for html_escape=False)."""

    def _md(s: str) -> str:
        return _md_text(s, html_escape)

    c = v.claim
    m = METRICS[c.metric]
    out = [f"- Claim: {_md(c.describe())} ({_md(c.where)})", f"- Verdict: **{v.verdict}** ({_md(v.reason)})"]
    if v.bound is not None:
        out += [f"- {_md(x)}" for x in v.bound.lines()]
    if v.comparison:
        comp = v.comparison
        for label, cell, val in (("Subject", comp.subject, comp.subject_value),
                                 ("Baseline", comp.baseline, comp.baseline_value)):
            if label == "Baseline" and comp.baseline_text is not None:
                out.append(f"- Baseline: {_md(comp.baseline_text)}")
                continue
            s = val.summary()
            src = ""
            if val.meter:
                src = f"; energy: {val.meter.meter}, {val.meter.method}, {val.meter.scope}" + (
                    " (ESTIMATE)" if val.meter.is_estimate else "")
            out.append(f"- {label}: {_md(cell.short)} on {_md(cell.device_label)}: {c.metric} median "
                       f"{_g(s.median)} {m.unit} {stats.fmt_ci(s.ci_low, s.ci_high)}, n={s.n}{src}")
        direction = "subject / baseline" if m.higher_is_better else "baseline / subject"
        out.append(f"- Measured improvement ({direction}): {fmt_ratio(comp.ratio)}; claimed at least "
                   f"{c.at_least:g}x" + ("; not judged (see the verdict's reason)" if v.blocked else ""))
    if v.best_baseline:
        bb = v.best_baseline
        judged = (f"-> {v.best_baseline_verdict}" if v.best_baseline_verdict else
                  f"({_md(_no_verdict(v.best_baseline_blocked, v.blocked))})")
        out.append(f"- Best baseline configuration measured: {_md(bb.baseline.short)} ({c.metric} median "
                   f"{_g(bb.baseline_value.summary().median)} {m.unit}); ratio against it "
                   f"{fmt_ratio(bb.ratio)} {judged}")
    out.append("- Caveats:" if v.caveats else "- Caveats: none found")
    out += [f"  - {_md(x)}" for x in v.caveats]
    return out


def _g(x: Optional[float]) -> str:
    return stats.fmt_num(x, 4)


def _md(s: str, html_escape: bool = True) -> str:
    """Text from claims files and runs made inert in a Markdown table or line: HTML escaped
    (as harness.report.document.md_escape does; that module imports this one) and pipes.
    html_escape=False: pipes only, for a caller that escapes the whole text once itself."""
    s = str(s)
    if html_escape:
        s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return s.replace("|", "\\|")


_md_text = _md
