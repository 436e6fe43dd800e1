"""The energy measurement of one cell: idle baseline, prefill and generation
windows, per-token figures with provenance.

Why this shape:

* Idle before and after, with the model loaded and the device quiet, because
  an accelerator board draws tens to hundreds of watts doing nothing (70 W on
  an idle H100); net energy = gross - idle_w x duration separates what the
  workload cost from what merely being switched on costs. Both are reported:
  a procurement team pays for gross, an engineer optimizes net.
* Separate prefill and generation windows, because prefill is compute-bound
  and decode memory-bound; one figure for both hides which one a claim is
  about. A meter cannot see inside a request, so decode energy is derived:
  generation (prefill + decode) minus prefill, per repetition.
* Windows long enough for every meter: a counter that updates every 100 ms
  cannot measure a 30 ms prefill. Work is repeated until the window lasts at
  least ``min_window_s`` and holds ``min_updates`` updates of each meter (at
  its observed period), or, with ``lengthen=False``, the reading is flagged
  "short-window". A short window is never reported silently.
* Meter trouble never raises out of here: a meter that fails is reported
  unavailable with its reason, and the other meters' figures stand. Errors of
  the workload itself (``run_prefill``/``run_generation``) do propagate, after
  the meters' windows are closed.

The backend is reached only through the two callables, so this module knows no
backend, model or device by name.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

from .meters.base import EnergyReading, Meter
from .meters.nvml import counter_vs_sampled

PHASES = ("idle-before", "prefill", "generation", "idle-after")
_QUALITY_RANK = {"ok": 0, "estimate": 1, "short-window": 2, "unavailable": 3}


@dataclass
class EnergySettings:
    """How the windows of one cell are sized.

    idle_s: length of each idle window (0 disables the idle baseline: no net
        figures then).
    min_window_s / min_updates: a window shorter than this, or holding fewer
        distinct meter updates, is too short for its meter.
    lengthen: repeat the work until the window is long enough (default), or
        run it once and flag the reading "short-window".
    max_repeats / max_window_s: bounds on lengthening (a stalled meter must
        not keep a cell running for ever).
    cross_check_tolerance: counter-vs-sampled relative disagreement above which
        the check is recorded as failed.
    """

    idle_s: float = 1.0
    min_window_s: float = 1.0
    min_updates: int = 10
    lengthen: bool = True
    max_repeats: int = 1000
    max_window_s: float = 300.0
    cross_check_tolerance: float = 0.15


def _safe(fn: Callable, *args):
    """(value, None) or (None, "ExcType: message") - meters must not kill a cell."""
    try:
        return fn(*args), None
    except Exception as e:  # noqa: BLE001 - deliberately broad: meter trouble is data
        return None, f"{type(e).__name__}: {e}"


class _Window:
    """Runs one named window over all meters and collects its readings."""

    def __init__(self, phase: str, meters: list[Meter], settings: EnergySettings):
        self.phase = phase
        self.meters = meters
        self.settings = settings
        self.repeats = 0
        self.target_s = 0.0
        self.t_start = self.t_end = 0.0
        self.readings: dict[str, list[EnergyReading]] = {}   # meter name -> readings
        self.errors: dict[str, str] = {}                     # meter name -> why it failed

    def _plan(self, min_s: float) -> float:
        """Seconds this window should last so every meter sees enough updates."""
        s = self.settings
        if not s.lengthen:
            return min_s
        need = min_s
        for m in self.meters:
            if not m.available:
                continue
            p, _ = _safe(m.expected_period_s)
            if p:
                need = max(need, s.min_updates * p)
        return min(need, s.max_window_s)

    def _enough_updates(self) -> bool:
        for m in self.meters:
            if not m.available or m.name in self.errors:
                continue
            n, _ = _safe(m.live_updates, self.phase)
            if n is not None and n < self.settings.min_updates:
                return False
        return True

    def run(self, work: Optional[Callable[[], None]], min_s: float) -> None:
        s = self.settings
        self.target_s = self._plan(min_s)
        self.t_start = time.time()
        for m in self.meters:
            _, err = _safe(m.begin_window, self.phase)
            if err:
                self.errors[m.name] = f"begin_window failed: {err}"
        try:
            while True:
                elapsed = time.time() - self.t_start
                if work is None:
                    time.sleep(min(0.02, max(0.001, self.target_s - elapsed)))
                else:
                    work()
                    self.repeats += 1
                elapsed = time.time() - self.t_start
                if work is not None and not s.lengthen:
                    break
                if elapsed >= s.max_window_s or (work is not None and self.repeats >= s.max_repeats):
                    break
                if elapsed >= self.target_s and (not s.lengthen or self._enough_updates()
                                                 or elapsed >= 2 * self.target_s + 1.0):
                    break
        finally:
            self._close()

    def _close(self) -> None:
        # meters whose end_window waits go last, so the wait pads no other meter's window
        for m in sorted(self.meters, key=lambda m: bool(getattr(m, "ends_late", False))):
            if m.name in self.errors:
                _safe(m.end_window, self.phase)  # tidy its bookkeeping; result unused
                continue
            res, err = _safe(m.end_window, self.phase)
            if err:
                self.errors[m.name] = f"end_window failed: {err}"
            else:
                self.readings[m.name] = list(res or [])
        self.t_end = time.time()

    def info(self) -> dict:
        return {"t_start": self.t_start, "t_end": self.t_end, "duration_s": self.t_end - self.t_start,
                "repeats": self.repeats, "target_s": self.target_s}


def _judge(r: EnergyReading, s: EnergySettings, phase: str) -> EnergyReading:
    """Flag a reading whose window is too short for its meter.

    Idle windows last ``idle_s`` as configured; only the update count applies
    to them (an idle rate from 3 updates is noise, from 0.5 s of 50 is not).
    """
    if r.quality != "ok" or r.joules is None:
        return r
    short = []
    if r.duration_s < s.min_window_s and not phase.startswith("idle"):
        short.append(f"{r.duration_s:.3f} s < min_window_s {s.min_window_s:g} s")
    if r.n_updates < s.min_updates:
        short.append(f"{r.n_updates} meter updates < min_updates {s.min_updates}")
    if short:
        r = dataclasses.replace(r, quality="short-window", reason="; ".join(short))
    return r


def _div(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _fin(x: Optional[float]) -> Optional[float]:
    return x if x is None or math.isfinite(x) else None


def _meter_summary(key: str, by_phase: dict[str, Optional[EnergyReading]], windows: dict[str, _Window],
                   tokens: dict, settings: EnergySettings) -> dict:
    ib, pf, gen, ia = (by_phase.get(p) for p in PHASES)
    ref = next((r for r in (gen, pf, ib, ia) if r is not None and r.joules is not None),
               next(r for r in (gen, pf, ib, ia) if r is not None))
    warnings: list[str] = []

    idle_rates = {p: r.watts for p, r in (("before", ib), ("after", ia)) if r is not None and r.joules is not None}
    idle_w = sum(idle_rates.values()) / len(idle_rates) if idle_rates else None
    if settings.idle_s > 0 and len(idle_rates) == 1:
        missing = "after" if "before" in idle_rates else "before"
        warnings.append(f"idle {missing} unavailable: idle_w from idle {next(iter(idle_rates))} only")
    for phase, r in (("idle-before", ib), ("idle-after", ia)):
        if r is not None and r.quality not in ("ok", "estimate") and ref.method != "estimate":
            warnings.append(f"{phase} {r.quality}: {r.reason}")

    def gross(r: Optional[EnergyReading]) -> Optional[float]:
        return r.joules if r is not None else None

    def net(r: Optional[EnergyReading]) -> Optional[float]:
        if r is None or r.joules is None or idle_w is None:
            return None
        return r.joules - idle_w * r.duration_s

    reps_p, reps_g = windows["prefill"].repeats, windows["generation"].repeats
    out: dict = {
        "meter": key, "method": ref.method, "scope": ref.scope,
        "update_period_s": ref.update_period_s,
        "idle_w": idle_w, "idle_w_before": idle_rates.get("before"), "idle_w_after": idle_rates.get("after"),
        "prefill_repeats": reps_p, "generation_repeats": reps_g,
    }
    per_rep: dict[str, dict[str, Optional[float]]] = {}
    for phase, r, reps in (("prefill", pf, reps_p), ("generation", gen, reps_g)):
        out[f"{phase}_gross_j"] = gross(r)
        out[f"{phase}_net_j"] = net(r)
        out[f"{phase}_duration_s"] = r.duration_s if r is not None else None
        out[f"{phase}_avg_w"] = r.watts if r is not None else None
        out[f"{phase}_n_updates"] = r.n_updates if r is not None else None
        per_rep[phase] = {"gross": _div(gross(r), reps), "net": _div(net(r), reps)}
        out[f"{phase}_gross_j_per_repeat"] = per_rep[phase]["gross"]
        out[f"{phase}_net_j_per_repeat"] = per_rep[phase]["net"]

    for kind in ("gross", "net"):
        p, g = per_rep["prefill"][kind], per_rep["generation"][kind]
        d = g - p if p is not None and g is not None else None
        out[f"decode_{kind}_j_per_repeat"] = d
        out[f"j_per_prompt_token_{kind}"] = _div(p, tokens["prompt_tokens"])
        out[f"j_per_generated_token_{kind}"] = _div(d, tokens["decode_tokens"])
        out[f"j_per_generated_token_e2e_{kind}"] = _div(g, tokens["generated_tokens"])
        out[f"tokens_per_joule_{kind}"] = _div(tokens["generated_tokens"], g) if g and g > 0 else None
        out[f"energy_per_request_{kind}_j"] = _div(g, tokens["sequences"])
    if out["decode_gross_j_per_repeat"] is not None and out["decode_gross_j_per_repeat"] < 0:
        warnings.append("decode energy came out negative: the generation window used less energy per "
                        "repetition than the prefill window (meter noise exceeds decode energy; lengthen "
                        "windows or raise min_updates)")
    out["avg_w"] = out["generation_avg_w"]

    # quality: the worst of the work windows; idle trouble is a warning (net figures go None)
    work = [r for r in (pf, gen)]
    quals = [r.quality if r is not None else "unavailable" for r in work]
    out["quality"] = max(quals, key=lambda q: _QUALITY_RANK.get(q, 2))
    # reason: about the work windows (idle trouble is in warnings, and shows as net = None)
    flagged = [(p, r.reason) for p, r in (("prefill", pf), ("generation", gen))
               if r is not None and r.reason and r.quality != "ok"]
    if ref.method == "estimate":
        out["reason"] = ref.reason
    elif len(flagged) == 2 and flagged[0][1] == flagged[1][1]:
        out["reason"] = flagged[0][1]          # same trouble in both: say it once
    else:
        out["reason"] = "; ".join(f"{p}: {why}" for p, why in flagged) or None
    if out["quality"] == "unavailable" and all(r is not None and r.joules is None for r in (ib, pf, gen, ia)):
        warnings[:] = [w for w in warnings if not w.startswith("idle-")]   # one reason is enough
    out["warnings"] = warnings

    check = counter_vs_sampled(gen) if gen is not None else None
    if check is not None and check["rel_diff"] is not None:
        check["tolerance"] = settings.cross_check_tolerance
        check["agree"] = abs(check["rel_diff"]) <= settings.cross_check_tolerance
        if not check["agree"]:
            warnings.append(f"counter and sampled power disagree by {100 * check['rel_diff']:+.1f} % "
                            f"over the generation window")
    out["cross_check"] = check
    for k, v in list(out.items()):
        if isinstance(v, float):
            out[k] = _fin(v)
    out["windows"] = {p: (dict(r.to_dict(), repeats=windows[p].repeats) if r is not None else None)
                      for p, r in zip(PHASES, (ib, pf, gen, ia)) if p in windows}
    return out


def _unavailable(meter: Meter, reason: str, phase: str, w: _Window) -> EnergyReading:
    return EnergyReading(meter=meter.name, method=meter.method, scope=meter.scope, joules=None,
                         duration_s=w.t_end - w.t_start, n_updates=0, update_period_s=None,
                         quality="unavailable", reason=reason, t_start=w.t_start, t_end=w.t_end)


def measure_cell_energy(meters: list[Meter], run_prefill: Callable[[], None],
                        run_generation: Callable[[], None], prompt_tokens: int, generated_tokens: int,
                        settings: Optional[EnergySettings] = None, *, sequences: int = 1) -> dict:
    """Energy of one cell, per meter, with provenance and a phase-labelled timeline.

    run_prefill: one synchronized prefill of the whole batch (``prompt_tokens``
        tokens in total). run_generation: one synchronized full request batch,
        prefill + decode (``generated_tokens`` tokens in total). sequences: the
        batch size, for energy per request and for the decode token count
        (prefill emits each sequence's first token, so decode produces
        ``generated_tokens - sequences``, as in DESIGN.md's TPOT).

    Meters not yet started are started (the caller stops them at the end of
    the run). With no available meter the work is not run at all.
    """
    s = settings or EnergySettings()
    decode_tokens = generated_tokens - sequences
    tokens = {"prompt_tokens": prompt_tokens, "generated_tokens": generated_tokens,
              "decode_tokens": decode_tokens if decode_tokens > 0 else None, "sequences": sequences}
    notes = [
        "decode energy = generation-window energy - prefill-window energy, per repetition "
        "(each generation repetition includes one prefill)",
        f"J per generated token (decode) uses decode tokens = generated_tokens - sequences = {decode_tokens} "
        "(prefill emits each sequence's first token); *_e2e and tokens_per_joule use the whole request "
        "(generation window) and all generated tokens",
        "net = gross - idle_w x window duration; idle_w = mean power of the idle-before and idle-after "
        "windows (model loaded, device quiet)" if s.idle_s > 0 else
        "idle windows disabled (idle_s = 0): no idle baseline, net figures are None",
        (f"windows lengthened by repeating the work to >= {s.min_window_s:g} s and >= {s.min_updates} "
         f"updates of each meter" if s.lengthen else
         f"windows not lengthened: readings with < {s.min_updates} updates or < {s.min_window_s:g} s "
         f"are flagged short-window"),
        "counter meters with a sampled alternative (nvml) are cross-checked against sampled power over "
        "the generation window of every cell (it costs nothing: power is sampled anyway)",
    ]
    result: dict = {"notes": notes, "settings": dataclasses.asdict(s), "tokens": tokens,
                    "windows": {}, "meters": [], "cross_checks": [], "timeline": []}
    if not meters:
        notes.append("no meters configured: nothing measured")
        return result
    for m in meters:
        if not m.started:
            _, err = _safe(m.start)
            if err:
                m.available, m.reason = False, f"start failed: {err}"
    if not any(m.available for m in meters):
        notes.append("no meter is available: work not run for energy")
        for m in meters:
            result["meters"].append({"meter": m.name, "method": m.method, "scope": m.scope,
                                     "quality": "unavailable", "reason": m.reason, "warnings": []})
        return result

    windows: dict[str, _Window] = {}
    plan = [("idle-before", None, s.idle_s), ("prefill", run_prefill, s.min_window_s),
            ("generation", run_generation, s.min_window_s), ("idle-after", None, s.idle_s)]
    for phase, work, min_s in plan:
        if work is None and s.idle_s <= 0:
            continue
        w = _Window(phase, meters, s)
        windows[phase] = w
        w.run(work, min_s)

    # readings keyed by the name each reading carries (RAPL gives one per zone), in meter order
    for m in meters:
        by_key: dict[str, dict[str, EnergyReading]] = {}
        for phase, w in windows.items():
            for r in w.readings.get(m.name, []):
                by_key.setdefault(r.meter, {})[phase] = _judge(r, s, phase)
        if not by_key:
            by_key[m.name] = {}
        for key, phases in by_key.items():
            for phase, w in windows.items():
                if phase not in phases:
                    why = w.errors.get(m.name) or m.reason or "meter gave no reading for this window"
                    phases[phase] = dataclasses.replace(_unavailable(m, why, phase, w), meter=key)
            entry = _meter_summary(key, phases, windows, tokens, s)
            result["meters"].append(entry)
            if entry.get("cross_check"):
                result["cross_checks"].append(entry["cross_check"])
    result["windows"] = {p: w.info() for p, w in windows.items()}
    result["timeline"] = _timeline(meters, windows)
    return result


def _timeline(meters: list[Meter], windows: dict[str, _Window]) -> list[dict]:
    """Every meter's samples over the cell, each labelled with its phase."""
    if not windows:
        return []
    spans = [(w.t_start, w.t_end, p) for p, w in windows.items()]
    t_lo, t_hi = min(a for a, _, _ in spans), max(b for _, b, _ in spans)
    rows = []
    for m in meters:
        got, _ = _safe(m.timeline, t_lo)
        for row in got or []:
            t = row.get("t")
            if t is None or t < t_lo or t > t_hi:
                continue
            phase = next((p for a, b, p in spans if a <= t <= b), "between")
            rows.append(dict(row, phase=phase))
    rows.sort(key=lambda r: r["t"])
    return rows
