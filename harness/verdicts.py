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

SUPPORTED, REFUTED, INCONCLUSIVE = "SUPPORTED", "REFUTED", "INCONCLUSIVE"
ROOFLINE_FLOOR_PCT = 50.0  # a baseline under this share of its roofline is "far under" it


@dataclass
class ClaimComparison:
    """The claim's metric on one subject cell and one baseline cell, and their ratio."""

    subject: ResultCell
    baseline: ResultCell
    subject_value: MetricValue
    baseline_value: MetricValue
    ratio: stats.Ratio


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

    @property
    def failed_required(self) -> bool:
        return self.claim.required and self.verdict == REFUTED


def _match_selector(c: ResultCell, sel: Selector) -> bool:
    for k, v in sel.given().items():
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


def _blocker(metric: str, subject: ResultCell, baseline: ResultCell) -> Optional[str]:
    """Why no ratio of these two cells can be judged (None when it can): a side that failed,
    failed the accuracy gate, or is faster than the roofline bounding the metric allows."""
    why = []
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
    """A verdict's ratio as a summary table shows it: flagged when a side blocks its judgement."""
    text = fmt_ratio(v.comparison.ratio if v.comparison else None)
    return f"{text} (not judged)" if v.blocked and text != "-" else text


def _compare(metric: str, s: ResultCell, b: ResultCell, kind: str, scope: Optional[str]) -> ClaimComparison:
    sv, bv = metric_value(s, metric, kind, scope), metric_value(b, metric, kind, scope)
    return ClaimComparison(s, b, sv, bv, improvement(sv, bv) if sv.n and bv.n else stats.Ratio(
        None, None, None, sv.n, bv.n, stats.CONFIDENCE, "independent", "median"))


def evaluate(claim: Claim, cells: list[ResultCell]) -> Verdict:
    """The verdict on one claim over the given cells, with every caveat that limits it."""
    metric, kind, scope = claim.metric, claim.energy, claim.scope
    batch = claim.workload.batch
    caveats: list[str] = []

    def side(sel: Selector, label: str) -> tuple[Optional[ResultCell], list[ResultCell], Optional[str]]:
        pool = [c for c in cells if _match_selector(c, sel) and _match_workload(c, claim.workload)]
        if not pool:
            return None, pool, (f"no measured cell matches the {label} ({sel.describe()}; "
                                f"{claim.workload.describe()})")
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
    caveats += _caveats(claim, comp)

    # the baseline at its best measured configuration (any batch)
    best_b = best_cell(b_pool, metric, kind, scope)
    if best_b is not None:
        v.best_baseline = comp if best_b is b_cell else _compare(metric, s_cell, best_b, kind, scope)
        v.best_baseline_blocked = _blocker(metric, s_cell, best_b)
        if v.best_baseline_blocked is None:
            v.best_baseline_verdict = _verdict_of(v.best_baseline.ratio, claim.at_least)
        if best_b is not b_cell:
            caveats.append(
                f"the baseline does best at batch {best_b.record.batch} ({best_b.short}), not batch "
                f"{b_cell.record.batch}: against that configuration the ratio is {fmt_ratio(v.best_baseline.ratio)}"
                + (f", which would be {v.best_baseline_verdict}" if v.best_baseline_verdict else
                   f" ({_no_verdict(v.best_baseline_blocked, v.blocked)})"))

    measured = _verdict_of(comp.ratio, claim.at_least)
    v.blocked = _blocker(metric, s_cell, b_cell)
    if v.blocked:
        v.reason = v.blocked
    elif comp.ratio.ratio is None:
        v.reason = "no ratio could be computed"
    elif comp.ratio.ci_low is None:
        v.reason = "no confidence interval (fewer than 2 repetitions on both sides)"
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
    """1 when a required claim is REFUTED (or, with strict, not SUPPORTED); else 0."""
    for v in verdicts:
        if v.claim.required and (v.verdict == REFUTED or (strict and v.verdict != SUPPORTED)):
            return 1
    return 0


# --- as text -------------------------------------------------------------------------------

def verdicts_markdown(verdicts: list[Verdict], heading: str = "#") -> str:
    out = [f"{heading} Claim verdicts", ""]
    out.append("| # | claim | metric | factor | measured ratio [95% CI] | verdict | required |")
    out.append("|---:|---|---|---:|---:|---|---|")
    for i, v in enumerate(verdicts, 1):
        r = v.comparison.ratio if v.comparison else None
        out.append(f"| {i} | {_md(v.claim.name)} | {v.claim.metric} | >= {v.claim.at_least:g}x | {shown_ratio(v)} | "
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
                src = f"; energy: {val.meter.meter}, {val.meter.method}, {val.meter.scope}" + (
                    " (ESTIMATE)" if val.meter.is_estimate else "")
            out.append(f"- {label}: {cell.short} on {cell.device_label}: {c.metric} median "
                       f"{_g(s.median)} {m.unit} {stats.fmt_ci(s.ci_low, s.ci_high)}, n={s.n}{src}")
        direction = "subject / baseline" if m.higher_is_better else "baseline / subject"
        out.append(f"- Measured improvement ({direction}): {fmt_ratio(comp.ratio)}; claimed at least "
                   f"{c.at_least:g}x" + ("; not judged (see the verdict's reason)" if v.blocked else ""))
    if v.best_baseline:
        bb = v.best_baseline
        judged = (f"-> {v.best_baseline_verdict}" if v.best_baseline_verdict else
                  f"({_md(_no_verdict(v.best_baseline_blocked, v.blocked))})")
        out.append(f"- Best baseline configuration measured: {bb.baseline.short} ({c.metric} median "
                   f"{_g(bb.baseline_value.summary().median)} {m.unit}); ratio against it "
                   f"{fmt_ratio(bb.ratio)} {judged}")
    out.append("- Caveats:" if v.caveats else "- Caveats: none found")
    out += [f"  - {_md(x)}" for x in v.caveats]
    return out


def _g(x: Optional[float]) -> str:
    return stats.fmt_num(x, 4)


def _md(s: str) -> str:
    """Text from claims files and runs made inert in a Markdown table or line: HTML escaped
    (as harness.report.document.md_escape does; that module imports this one) and pipes."""
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
