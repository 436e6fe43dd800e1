"""The report as a document (headings, paragraphs, tables, figures) built from result
folders only, and its Markdown rendering. harness.report.html renders the same document
as one self-contained HTML file.

Also here: the procurement figures (tokens per joule, J per 1k tokens, tokens/s per
watt, cost per million tokens from a prices file) and the side-by-side comparison of
matching cells that `harness compare` prints.

Cost per million generated tokens (documented in the report's Methods section too):

    T      = batch x gen_len / median request time         generated tokens/s while busy
    u      = utilisation                                    share of the lifetime spent busy
    hardware = price / (lifetime_years x 31 557 600 s x u x T) x 1e6
    energy   = (1e6 / tokens_per_joule  +  idle_W x (1e6 / T) x (1 - u) / u) x pue / 3.6e6 kWh
               x electricity_per_kwh
    total    = hardware + energy

tokens_per_joule is the gross figure of the cell's primary meter (board, package or
wall, as labelled); idle_W is that meter's idle baseline (left out, and said so, when
unknown). An estimate stays labelled "estimate" in the cost column as everywhere else.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
import datetime as _dt
import math
from pathlib import Path
from typing import Any

from harness import stats
from harness.claims import METRICS, Cell, is_estimate, load_cells, metric_value, read_yaml
from harness.results import ResultsError

SECONDS_PER_YEAR = 365.25 * 86400
REPORT_METRICS = ("decode_tps", "prefill_tps", "ttft_s", "tpot_s", "tokens_per_joule", "j_per_token")


# --- document model ------------------------------------------------------------------------------

@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    row_classes: list[str | None] = field(default_factory=list)
    right: tuple[str, ...] = ()
    caption: str = ""

    def add(self, row: list, cls: str | None = None) -> None:
        self.rows.append(["-" if v is None else str(v) for v in row])
        self.row_classes.append(cls)


@dataclass
class Document:
    title: str
    blocks: list[tuple] = field(default_factory=list)
    images: dict[str, bytes] = field(default_factory=dict)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def note(self, text: str) -> None:
        self.blocks.append(("note", text))

    def ul(self, items: list[str]) -> None:
        if items:
            self.blocks.append(("ul", list(items)))

    def table(self, t: Table) -> None:
        self.blocks.append(("table", t))

    def img(self, key: str, png: bytes, caption: str) -> None:
        self.images[key] = png
        self.blocks.append(("img", key, caption))


# --- prices -------------------------------------------------------------------------------------

@dataclass
class HardwarePrice:
    match: dict
    price: float
    lifetime_years: float
    name: str = ""
    utilisation: float | None = None


@dataclass
class Prices:
    currency: str
    electricity_per_kwh: float
    utilisation: float
    pue: float = 1.0
    hardware: list[HardwarePrice] = field(default_factory=list)
    source: str = ""

    def for_cell(self, c: Cell) -> HardwarePrice | None:
        for hw in self.hardware:
            ok = True
            for k, v in hw.match.items():
                have = {"backend": c.record.get("backend"), "device": c.record.get("device"), "host": c.host,
                        "run": c.run_id, "backend_type": c.record.get("backend_type")}.get(k)
                ok &= str(have) == str(v)
            if ok:
                return hw
        return None


PRICE_KEYS = ("currency", "electricity_per_kwh", "utilisation", "pue", "hardware")
HW_KEYS = ("match", "name", "price", "lifetime_years", "utilisation")
MATCH_KEYS = ("backend", "backend_type", "device", "host", "run")


def load_prices(path: str | Path) -> Prices:
    """Parse a prices file (see workloads/prices.example.yaml); errors name file, line and key."""
    path = Path(path)
    data, lines = read_yaml(path, "prices", error=ResultsError)
    problems: list[str] = []

    def fail(key: str, msg: str) -> None:
        line = lines.get(key) or lines.get(key.rsplit(".", 1)[0]) or lines.get("")
        problems.append(f"{path}:{line}: {key}: {msg}" if line else f"{path}: {key}: {msg}")

    if not isinstance(data, dict):
        raise ResultsError(f"{path}: expected a mapping with keys {', '.join(PRICE_KEYS)}")

    def num(d: dict, key: str, where: str, lo: float, hi: float, required: bool = True, default=None):
        if key not in d:
            if required:
                fail(where, f"missing key `{key}`")
            return default
        v = d[key]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not lo <= v <= hi:
            fail(f"{where}.{key}" if where else key, f"expected a number in [{lo:g}, {hi:g}], got {v!r}")
            return default
        return float(v)

    for k in data:
        if k not in PRICE_KEYS:
            fail(str(k), f"unknown key (expected one of {', '.join(PRICE_KEYS)})")
    cur = data.get("currency", "USD")
    if not isinstance(cur, str):
        fail("currency", f"expected a currency name such as USD, got {cur!r}")
    kwh = num(data, "electricity_per_kwh", "", 0, 1e6)
    util = num(data, "utilisation", "", 1e-6, 1)
    pue = num(data, "pue", "", 1, 10, required=False, default=1.0)
    hws = []
    items = data.get("hardware", [])
    if not isinstance(items, list):
        fail("hardware", f"expected a list of {{match, price, lifetime_years}}, got {items!r}")
        items = []
    for i, h in enumerate(items):
        p = f"hardware[{i}]"
        if not isinstance(h, dict):
            fail(p, f"expected a mapping with keys {', '.join(HW_KEYS)}, got {h!r}")
            continue
        for k in h:
            if k not in HW_KEYS:
                fail(f"{p}.{k}", f"unknown key (expected one of {', '.join(HW_KEYS)})")
        m = h.get("match")
        if not isinstance(m, dict) or not m:
            fail(f"{p}.match" if "match" in h else p,
                 f"expected `match:` with keys from {', '.join(MATCH_KEYS)} (e.g. {{device: cuda:0}})")
            m = {}
        for k in m:
            if k not in MATCH_KEYS:
                fail(f"{p}.match.{k}", f"unknown key (expected one of {', '.join(MATCH_KEYS)})")
        price = num(h, "price", p, 0, 1e12)
        life = num(h, "lifetime_years", p, 0.01, 100)
        u = num(h, "utilisation", p, 1e-6, 1, required=False)
        name = h.get("name", "")
        if price is not None and life is not None:
            hws.append(HardwarePrice(dict(m), price, life, str(name), u))
    if problems:
        raise ResultsError("; ".join(problems))
    return Prices(cur, kwh, util, pue, hws, str(path))


def cost_per_million(c: Cell, tpj_meter: dict | None, prices: Prices) -> dict:
    """{"hardware", "energy", "total", "note"} in the prices' currency per 1e6 generated tokens."""
    r = c.record
    e2e = stats.summarize(metric_value(c, "e2e_s").samples).median
    out: dict[str, Any] = {"hardware": None, "energy": None, "total": None, "notes": []}
    if not e2e or not c.ok:
        out["notes"].append("no valid timing")
        return out
    T = r["batch"] * r["gen_len"] / e2e
    hw = prices.for_cell(c)
    u = (hw.utilisation if hw and hw.utilisation is not None else prices.utilisation)
    if hw:
        out["hardware"] = hw.price / (hw.lifetime_years * SECONDS_PER_YEAR * u * T) * 1e6
    else:
        out["notes"].append("no hardware price matches")
    tpj = tpj_meter.get("tokens_per_joule_gross") if tpj_meter else None
    if tpj:
        busy_j = 1e6 / tpj
        idle_w = tpj_meter.get("idle_w")
        idle_j = idle_w * (1e6 / T) * (1 - u) / u if idle_w is not None else 0.0
        if idle_w is None:
            out["notes"].append("idle power unknown: idle time not costed")
        out["energy"] = (busy_j + idle_j) * prices.pue / 3.6e6 * prices.electricity_per_kwh
        if is_estimate(tpj_meter):
            out["notes"].append("energy is an ESTIMATE")
    else:
        out["notes"].append("no energy figure")
    if out["hardware"] is not None or out["energy"] is not None:
        out["total"] = (out["hardware"] or 0.0) + (out["energy"] or 0.0)
    return out


# --- per-cell figures ---------------------------------------------------------------------------------

def _g(x: float | None, digits: int = 4) -> str:
    return stats.fmt_num(x, digits)


def _shorten(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n - 1].rstrip() + "…"


def _money(x: float | None, cur: str = "") -> str:
    if x is None:
        return "-"
    text = f"{x:.3g}" if x < 100 else f"{x:,.0f}"
    return f"{cur} {text}" if cur else text


def _med_ci(s: stats.Summary, digits: int = 4) -> str:
    if s.median is None:
        return "-"
    return f"{_g(s.median, digits)} {stats.fmt_ci(s.ci_low, s.ci_high, 3)}"


def _energy_tag(m: dict | None) -> str:
    if not m:
        return ""
    if is_estimate(m):
        return " (estimate)"
    return " (short window)" if m.get("quality") == "short-window" else ""


@dataclass
class CellFigures:
    cell: Cell
    summaries: dict[str, stats.Summary]
    meters: dict[str, dict | None]
    reasons: dict[str, str | None]

    def med(self, metric: str) -> float | None:
        return self.summaries[metric].median

    def value(self, metric: str) -> str:
        """median [CI] with its energy tag, or why there is none; INVALID cells say so."""
        s = self.summaries[metric]
        text = _med_ci(s) + _energy_tag(self.meters.get(metric)) if s.median is not None else "-"
        if self.cell.invalid:
            return f"INVALID {text}"
        if self.cell.record.get("status") == "failed":
            return "FAILED"
        return text


def cell_figures(c: Cell, metrics=REPORT_METRICS + ("j_per_prompt_token", "j_per_1k_tokens", "tokens_per_s_per_watt",
                                                    "e2e_s")) -> CellFigures:
    sums, meters, reasons = {}, {}, {}
    for m in metrics:
        v = metric_value(c, m)
        sums[m], meters[m], reasons[m] = v.summary(), v.meter, v.reason
    return CellFigures(c, sums, meters, reasons)


# --- the report -----------------------------------------------------------------------------------

def _by_device(cells: list[Cell]) -> dict[str, list[Cell]]:
    out: dict[str, list[Cell]] = {}
    for c in cells:
        out.setdefault(c.device_label, []).append(c)
    return out


def _labeler(cells: list[Cell]):
    shapes = {(c.record.get("prompt_len"), c.record.get("gen_len")) for c in cells}
    runs_of: dict[str, set] = {}
    for c in cells:
        runs_of.setdefault(str(c.record.get("backend")), set()).add(c.run_id)

    def label(c: Cell) -> str:
        r = c.record
        s = f"{r.get('backend')} {c.precision}"
        if len(runs_of[str(r.get('backend'))]) > 1:
            s += f" [{c.run_id}]"
        if len(shapes) > 1:
            s += f" p{r.get('prompt_len')}/g{r.get('gen_len')}"
        return s
    return label


def read_timeline(c: Cell) -> list[dict]:
    """The cell's power timeline CSV (inside its run folder only)."""
    rel = c.record.get("energy_timeline")
    if not rel:
        return []
    path = (c.run_dir / rel).resolve()
    if c.run_dir.resolve() not in path.parents or not path.exists():
        return []
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                rows.append({"t": float(row["t"]), "phase": row.get("phase") or "", "meter": row.get("meter") or "",
                             "watts": float(row["watts"]) if row.get("watts") not in (None, "") else None})
            except (KeyError, ValueError):
                continue
    return rows


def pick_timeline_cell(cells: list[Cell], cell_id: str | None) -> tuple[Cell | None, list[dict]]:
    """The chosen cell (by id, optionally "RUN:CELL_ID") or the one with the most power samples."""
    if cell_id:
        run, _, cid = cell_id.rpartition(":") if ":" in cell_id and not cell_id.startswith("cuda") else ("", "", cell_id)
        found = [c for c in cells if c.record.get("cell_id") == cid and (not run or run == c.run_id)]
        if not found:
            found = [c for c in cells if c.record.get("cell_id") == cell_id]
        if not found:
            have = [c.record.get("cell_id") for c in cells if c.record.get("energy_timeline")]
            raise ResultsError(f"--timeline {cell_id}: no such cell; cells with a power timeline: "
                               + (", ".join(have) if have else "none"))
        return found[0], read_timeline(found[0])
    best, best_rows = None, []
    for c in cells:
        rows = read_timeline(c) if c.record.get("energy_timeline") else []
        if len(rows) > len(best_rows):
            best, best_rows = c, rows
    return best, best_rows


def build_report(run_dirs, prices_path: str | Path | None = None, timeline_cell: str | None = None,
                 claims_path: str | Path | None = None, with_plots: bool = True) -> Document:
    cells = load_cells(run_dirs)
    prices = load_prices(prices_path) if prices_path else None
    claims = None
    if claims_path:
        from harness.claims import load_claims, verify

        claims = verify(load_claims(claims_path), cells)
    metas = {}
    for c in cells:
        metas.setdefault(c.run_id, (c.run_dir, c.meta))
    for d in run_dirs:  # runs with no records still get a line
        from harness.results import load_run

        meta, _ = load_run(d)
        rid = str(meta.get("run_id") or Path(d).name)
        metas.setdefault(rid, (Path(d), meta))

    doc = Document(title="Benchmark report: " + ", ".join(metas))
    figs = {id(c): cell_figures(c) for c in cells}
    label = _labeler(cells)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    doc.p(f"Generated {now} by `harness report` from {len(metas)} run folder(s) and {len(cells)} cell(s). "
          "Every figure is the **median** of the repetitions with its **95 % bootstrap interval** in brackets; "
          "INVALID marks a cell whose outputs failed the accuracy gate (shown, never ranked best); "
          "an energy figure labelled *estimate* was not measured.")

    # runs
    t = Table(["run", "suite", "host", "devices", "started", "harness", "git commit", "cells (ok / failed / invalid)",
               "repetitions"], right=("repetitions",))
    for rid, (d, meta) in metas.items():
        cs = [c for c in cells if c.run_id == rid]
        started = meta.get("started_at")
        if isinstance(started, (int, float)):
            started = _dt.datetime.fromtimestamp(started, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        t.add([rid, meta.get("suite", "-"), (meta.get("inventory") or {}).get("hostname", "-"),
               ", ".join(sorted({c.device_label for c in cs})) or "-", started or "-",
               meta.get("harness_version", "-"), str((meta.get("inventory") or {}).get("git_commit") or "-")[:12],
               f"{sum(c.ok for c in cs)} / {sum(c.get('status') == 'failed' for c in cs)} / {sum(c.invalid for c in cs)}",
               (meta.get("config") or {}).get("repetitions", "-")])
    doc.h(2, "Runs")
    doc.table(t)

    # at a glance
    doc.h(2, "At a glance")
    for dev, dcells in _by_device(cells).items():
        items = []
        best = {}
        for metric in ("decode_tps", "tokens_per_joule"):
            cand = [c for c in dcells if c.ok and figs[id(c)].med(metric) is not None]
            if metric == "tokens_per_joule":  # a measurement beats any estimate for "best"
                measured = [c for c in cand if not is_estimate(figs[id(c)].meters.get(metric))]
                cand = measured or cand
            if cand:
                b = max(cand, key=lambda c: figs[id(c)].med(metric))
                best[metric] = b
                f = figs[id(b)]
                items.append(f"Best {METRICS[metric].label}: **{_g(f.med(metric))} {METRICS[metric].unit}**"
                             f"{_energy_tag(f.meters.get(metric))} {stats.fmt_ci(f.summaries[metric].ci_low, f.summaries[metric].ci_high)}"
                             f" with {label(b)} at batch {b.record.get('batch')}")
            elif metric == "tokens_per_joule":
                reasons = sorted({figs[id(c)].reasons.get(metric) or "" for c in dcells} - {""})
                items.append("Energy: " + ("; ".join(reasons)[:300] if reasons else "no figure"))
        items += _warnings(dcells, figs)
        doc.h(3, dev)
        doc.ul(items)

    # per device tables
    from harness.report.table import bench_rows

    for dev, dcells in _by_device(cells).items():
        doc.h(2, f"Device: {dev}")
        doc.h(3, "Throughput (llama-bench style)")
        df = bench_rows([c.record for c in dcells], ci=True).drop(columns=["device"])
        t = Table(list(df.columns), right=("batch", "t/s", "median [95% CI]", "n", "% roof", "J/token"),
                  caption="t/s: mean ± sd over repetitions; median [95 % bootstrap CI]; % roof: share of the "
                          "calibrated roofline (SUSPECT above 100 %); J/token: gross, primary meter (scope)")
        for _, row in df.iterrows():
            vals = [str(row[c]) for c in df.columns]
            t.add(vals, "invalid" if any(v.startswith(("INVALID", "FAILED")) for v in vals)
                  or "INVALID" in str(row["accuracy"]) else ("suspect" if "SUSPECT" in str(row["% roof"]) else None))
        doc.table(t)
        roof_basis = sorted({(c.record.get("roofline") or {}).get("basis") for c in dcells} - {None})
        doc.p("Roofline basis: " + (", ".join(roof_basis) if roof_basis else
                                    "none: no calibration for this device (run `harness calibrate` on that machine)"))

        doc.h(3, "Procurement figures")
        cols = ["backend", "batch", "test", "decode tok/s", "tokens/J", "J per 1k tokens", "tok/s per W",
                "avg W", "energy source"]
        if prices:
            cols += [f"cost per 1M tokens ({prices.currency}): hardware + energy = total"]
        t = Table(cols, right=("batch",) + tuple(cols[3:8]) + tuple(cols[9:]),
                  caption="tokens/J and J per 1k tokens: generated tokens over whole requests (prefill included), "
                          "gross; tok/s per W: decode tokens/s / mean power during generation")
        for c in dcells:
            f = figs[id(c)]
            m = f.meters.get("tokens_per_joule") or f.meters.get("j_per_token")
            src = "-"
            if m:
                src = f"{m.get('meter')}, {m.get('method')}, {m.get('scope')}" + (" — ESTIMATE" if is_estimate(m) else "")
            elif c.ok:
                src = _shorten(f.reasons.get("tokens_per_joule") or "no energy figure", 140)
            r = c.record
            row = [label(c), r.get("batch"), f"pp{r.get('prompt_len')}+tg{r.get('gen_len')}", f.value("decode_tps"),
                   f.value("tokens_per_joule"), f.value("j_per_1k_tokens"), f.value("tokens_per_s_per_watt"),
                   _g(m.get("generation_avg_w"), 3) if m else "-", src]
            if prices:
                cost = cost_per_million(c, f.meters.get("tokens_per_joule"), prices)
                if not c.ok:
                    row.append(c.status_label)
                else:
                    row.append(f"{_money(cost['hardware'])} + {_money(cost['energy'])} = "
                               f"{_money(cost['total'], prices.currency)}"
                               + (f" ({'; '.join(cost['notes'])})" if cost["notes"] else ""))
            t.add(row, "invalid" if not c.ok else None)
        doc.table(t)

        doc.h(3, "Energy provenance")
        t = Table(["backend", "batch", "meter", "method", "scope", "quality", "update period", "updates (prefill / gen)",
                   "window s (prefill / gen)", "idle W", "avg W (gen)", "J/token (gen)", "notes"],
                  right=("batch", "update period", "updates (prefill / gen)", "window s (prefill / gen)", "idle W",
                         "avg W (gen)", "J/token (gen)"))
        n_rows = 0
        for c in dcells:
            e = c.record.get("energy") or {}
            if e.get("status"):
                t.add([label(c), c.record.get("batch"), "-", "-", "-", f"energy {e['status']}", "-", "-", "-", "-", "-",
                       "-", ""], "invalid" if not c.ok else None)
                n_rows += 1
                continue
            for m in e.get("meters") or []:
                est = is_estimate(m)
                qual = "ESTIMATE (not measured)" if est else str(m.get("quality", "-"))
                notes = [m.get("reason")] if m.get("reason") and not est else []
                notes += m.get("warnings") or []
                if c.invalid:
                    notes.insert(0, "cell INVALID")
                per = m.get("update_period_s")
                t.add([label(c), c.record.get("batch"), m.get("meter"), m.get("method"), m.get("scope"), qual,
                       f"{per * 1000:.0f} ms" if per else "-",
                       f"{_g(m.get('prefill_n_updates'))} / {_g(m.get('generation_n_updates'))}",
                       f"{_g(m.get('prefill_duration_s'), 3)} / {_g(m.get('generation_duration_s'), 3)}",
                       _g(m.get("idle_w"), 3), _g(m.get("generation_avg_w"), 3),
                       _g(m.get("j_per_generated_token_gross")) + (" est." if est else ""),
                       _shorten("; ".join(str(x) for x in notes), 200)],
                      "invalid" if not c.ok else ("estimate" if est else None))
                n_rows += 1
        if n_rows:
            doc.table(t)
        else:
            doc.p("No energy records.")

    # figures
    if with_plots and cells:
        from harness.report import plots

        doc.h(2, "Figures")
        series: dict[tuple, dict] = {}
        pts = []
        for c in cells:
            if c.get("status") == "failed":
                continue
            f = figs[id(c)]
            key = (c.device_label, label(c))
            s = series.setdefault(key, {"label": label(c) + (f" @ {c.record.get('device')}" if len(_by_device(cells)) > 1 else ""),
                                        "device": c.device_label, "points": []})
            est = is_estimate(f.meters.get("tokens_per_joule")) or is_estimate(f.meters.get("j_per_token"))
            s["points"].append({"batch": c.record.get("batch"), "decode_tps": f.med("decode_tps"),
                                "j_per_token": f.med("j_per_token"), "tokens_per_joule": f.med("tokens_per_joule"),
                                "valid": c.ok, "estimate": est})
            tpot = f.med("tpot_s")
            pts.append({"label": s["label"], "device": c.device_label, "decode_tps": f.med("decode_tps"),
                        "tpot_ms": tpot * 1000 if tpot is not None else None, "j_per_token": f.med("j_per_token"),
                        "valid": c.ok, "estimate": est, "batch": c.record.get("batch")})
        doc.img("batch", plots.batch_figure(list(series.values())),
                "Decode tokens/s, J per generated token and generated tokens per joule against batch size "
                "(medians; hollow markers and dashed lines: energy estimates; red crosses: INVALID cells).")
        doc.img("tradeoff", plots.tradeoff_figure(pts),
                "Latency (time per output token) against decode throughput and against J per generated token. "
                "The stepped lines are each device's Pareto front: no other valid configuration on that device is "
                "both faster and lower-latency (left) or both cheaper in energy and lower-latency (right).")
        tc, rows = pick_timeline_cell(cells, timeline_cell)
        if tc is not None:
            doc.img("timeline", plots.timeline_figure(rows, f"power timeline: {tc.record.get('cell_id')} [{tc.run_id}]",
                                                         (tc.record.get("energy") or {}).get("windows")),
                    f"Power of cell {tc.record.get('cell_id')} (run {tc.run_id}) over its energy windows: idle before, "
                    "prefill, generation, idle after (choose another with --timeline CELL_ID).")
        else:
            doc.p("No cell recorded a power timeline (no meter sampled power during these runs).")

    if claims is not None:
        doc.h(2, "Claim verdicts")
        doc.blocks.append(("verdicts", claims))

    _methods(doc, prices)
    return doc


def _warnings(dcells: list[Cell], figs: dict) -> list[str]:
    out = []
    inv = [c for c in dcells if c.invalid]
    if inv:
        out.append(f"**{len(inv)} INVALID cell(s)** (failed the accuracy gate; never ranked best): "
                   + ", ".join(c.short for c in inv))
    failed = [c for c in dcells if c.get("status") == "failed"]
    if failed:
        out.append(f"**{len(failed)} FAILED cell(s)**: " + ", ".join(
            f"{c.short} ({((c.get('error') or {}).get('message') or '').splitlines()[0][:80] if (c.get('error') or {}).get('message') else 'no message'})"
            for c in failed))
    sus = [c for c in dcells if (c.get("roofline") or {}).get("suspect")]
    if sus:
        out.append(f"**SUSPECT**: {len(sus)} cell(s) above 100 % of the roofline (a measurement or work-model error, "
                   "not a win): " + ", ".join(c.short for c in sus))
    if not any((c.get("roofline") or {}).get("decode_pct") is not None for c in dcells if c.ok):
        out.append("Roofline unknown: no calibration for this device (run `harness calibrate`)")
    est = [c for c in dcells if is_estimate(figs[id(c)].meters.get("tokens_per_joule"))]
    if est:
        out.append(f"Energy of {len(est)} cell(s) is an ESTIMATE (constant power x time), not a measurement")
    short = [c for c in dcells if any(m.get("quality") == "short-window" for m in (c.get("energy") or {}).get("meters") or [])]
    if short:
        out.append(f"{len(short)} cell(s) have meter windows too short for their meter (quality short-window)")
    ns = [figs[id(c)].summaries["decode_tps"].n for c in dcells if c.ok]
    if ns and min(ns) < stats.MIN_REPETITIONS:
        out.append(f"Only {min(ns)} repetition(s) per cell: intervals from fewer than {stats.MIN_REPETITIONS} do not "
                   f"hold their coverage; run at least {stats.DEFAULT_REPETITIONS}")
    unstable = []
    for c in dcells:
        if not c.ok:
            continue
        st = stats.stability(figs[id(c)].summaries["decode_tps"])
        if not st["stable"] and st["n"] >= stats.MIN_REPETITIONS:
            unstable.append((c, st))
    if unstable:
        worst = max(unstable, key=lambda t: t[1]["rel_half_width"] or 0)
        out.append(f"{len(unstable)} cell(s) have decode intervals wider than ±{100 * stats.STABLE_REL_HALF_WIDTH:g} % "
                   f"(widest {worst[0].short}: {worst[1]['reason']})")
    return out


def _methods(doc: Document, prices: Prices | None) -> None:
    doc.h(2, "Methods and definitions")
    doc.ul([
        "**prefill tokens/s** = batch x prompt_len / time to first token; **decode tokens/s** = batch x (gen_len - 1) "
        "/ (request time - TTFT); **TPOT** = (request time - TTFT) / (gen_len - 1).",
        f"**Statistics**: median of the repetitions; 95 % {stats.METHOD} bootstrap interval of the median "
        f"(scipy.stats.bootstrap, {stats.N_RESAMPLES} resamples, seed {stats.SEED}: the same folders always give the "
        f"same intervals). Ratios: median(A) / median(B), A and B resampled independently. Fewer than "
        f"{stats.MIN_REPETITIONS} repetitions give intervals that under-cover; {stats.DEFAULT_REPETITIONS} is the "
        "recommended default.",
        "**Energy** (gross: everything the meter saw in the window): J per generated token = decode-phase joules / "
        "decode tokens; **tokens/J** = generated tokens / joules of whole requests; **J per 1k tokens** = 1000 / "
        "tokens/J; **tokens/s per W** = decode tokens/s / mean power during generation. Each energy figure comes from "
        "one meter window per cell (work repeated inside it); its interval is derived from the repetitions' timings "
        "(J x t_i / median t) and so reflects timing spread only, not meter error.",
        "**Provenance**: meter, method (counter | sampled | external | estimate), scope (gpu-board | cpu-package | dram | "
        "npu-module | wall), update period and number of updates per window. A *short-window* reading held too few "
        "meter updates; an *estimate* (constant watts x time) is never a measurement and is labelled so everywhere.",
        "**Roofline %**: decode = measured tokens/s / (batch x calibrated bandwidth / bytes each step must move); "
        "prefill = minimum time at the calibrated matmul rate / measured TTFT. Above 100 % is physically impossible: "
        "SUSPECT.",
        "**INVALID**: the backend's logits disagreed with the fp32 reference beyond the dtype's tolerance; such a cell "
        "is shown but never ranked best, never on a Pareto front, and cannot support a claim.",
    ])
    cost = ("**Cost per million generated tokens** = hardware + energy, where T = batch x gen_len / median request "
            "time (generated tokens/s while busy), u = utilisation; hardware = price / (lifetime_years x 31,557,600 s "
            "x u x T) x 10^6; energy = (10^6 / tokens_per_J + idle_W x (10^6 / T) x (1 - u) / u) x PUE / 3.6x10^6 kWh "
            "x electricity price. The energy term counts only what the meter's scope covers (a board meter misses "
            "the host).")
    if prices:
        hw = "; ".join(f"{h.name or h.match}: {prices.currency} {h.price:,.0f} over {h.lifetime_years:g} years"
                       + (f", utilisation {h.utilisation:g}" if h.utilisation is not None else "")
                       for h in prices.hardware)
        cost += (f" Prices from `{prices.source}`: electricity {prices.currency} {prices.electricity_per_kwh:g}/kWh, "
                 f"utilisation {prices.utilisation:g}, PUE {prices.pue:g}; hardware: {hw or 'none given'}.")
    else:
        cost += " No prices file given (`--prices FILE`, see workloads/prices.example.yaml): no cost column."
    doc.ul([cost])


# --- markdown rendering ------------------------------------------------------------------------------

def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def table_markdown(t: Table) -> str:
    if not t.rows:
        return "(no rows)"
    lines = ["| " + " | ".join(_md_cell(c) for c in t.columns) + " |",
             "|" + "|".join("---:" if c in t.right else "---" for c in t.columns) + "|"]
    for row, cls in zip(t.rows, t.row_classes):
        cells = [_md_cell(v) for v in row]
        if cls == "invalid":
            cells = [f"**{v}**" if v.startswith(("INVALID", "FAILED")) else v for v in cells]
        lines.append("| " + " | ".join(cells) + " |")
    out = "\n".join(lines)
    if t.caption:
        out += f"\n\n_{t.caption}_"
    return out


def to_markdown(doc: Document, image_dir: str = "plots") -> str:
    out = [f"# {doc.title}", ""]
    for b in doc.blocks:
        kind = b[0]
        if kind == "h":
            out += [f"{'#' * b[1]} {b[2]}", ""]
        elif kind == "p":
            out += [b[1], ""]
        elif kind == "note":
            out += [f"> {b[1]}", ""]
        elif kind == "ul":
            out += [f"- {x}" for x in b[1]] + [""]
        elif kind == "table":
            out += [table_markdown(b[1]), ""]
        elif kind == "img":
            out += [f"![{b[2]}]({image_dir}/{b[1]}.png)", "", f"_{b[2]}_", ""]
        elif kind == "verdicts":
            from harness.claims import verdicts_markdown

            out += verdicts_markdown(b[1], heading="##").splitlines()[2:] + [""]
    return "\n".join(out).rstrip() + "\n"


def write_report(doc: Document, out_dir: str | Path) -> tuple[Path, Path]:
    """report.md (+ plots/*.png beside it) and report.html (self-contained)."""
    from harness.report.html import to_html

    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if doc.images:
            (out_dir / "plots").mkdir(exist_ok=True)
            for k, png in doc.images.items():
                (out_dir / "plots" / f"{k}.png").write_bytes(png)
        md = out_dir / "report.md"
        md.write_text(to_markdown(doc))
        html = out_dir / "report.html"
        html.write_text(to_html(doc))
    except OSError as e:
        raise ResultsError(f"{out_dir}: cannot write the report ({e.strerror or e})") from None
    return md, html


# --- comparison of matching cells ---------------------------------------------------------------------

COMPARE_METRICS = ("decode_tps", "prefill_tps", "ttft_s", "tpot_s", "tokens_per_joule", "j_per_token")


@dataclass
class CompareRow:
    workload: tuple
    metric: str
    ref: Cell
    other: Cell
    ref_summary: stats.Summary
    other_summary: stats.Summary
    ratio: stats.Ratio  # other / reference (raw metric)
    judgement: str
    ref_meter: dict | None = None
    other_meter: dict | None = None


@dataclass
class Comparison:
    configs: list[tuple]
    config_labels: dict[tuple, str]
    rows: list[CompareRow]
    overall: dict[tuple, stats.Ratio]  # (other config, metric) -> geometric mean over workloads (paired)
    unmatched: list[Cell]


def _judge(metric: str, r: stats.Ratio, ref: Cell, other: Cell) -> str:
    if ref.invalid or other.invalid:
        return "INVALID: not compared"
    if not (ref.ok and other.ok):
        return "FAILED: not compared"
    if r.ratio is None:
        return "no figure"
    if r.ci_low is None:
        return "no interval"
    hi_better = METRICS[metric].higher_is_better
    if r.ci_low > 1:
        return "better" if hi_better else "worse"
    if r.ci_high < 1:
        return "worse" if hi_better else "better"
    return "no clear difference"


def build_compare(cells: list[Cell], metrics=COMPARE_METRICS) -> Comparison:
    """Configurations (run, backend, device) side by side on the workloads they share.

    The first configuration (in the order the runs were given) is the reference; each other
    one is compared with it on every matching cell (same model, precision, batch, prompt
    length, generation length and scenario). Ratios are other / reference of the metric as
    measured, with their bootstrap interval, and a judgement of which side is better.
    """
    configs = list(dict.fromkeys(c.config_key for c in cells))
    if len(configs) < 2:
        raise ResultsError("compare needs at least two configurations (run, backend, device); these runs hold "
                           f"{len(configs)}: give another run folder")
    labels = {}
    for k in configs:
        c = next(c for c in cells if c.config_key == k)
        labels[k] = f"{k[0]}: {k[1]} @ {c.device_label}"
    by = {(c.config_key, c.workload_key): c for c in cells}
    ref = configs[0]
    rows: list[CompareRow] = []
    matched: set[int] = set()
    for other in configs[1:]:
        for (cfg, wk), rc in by.items():
            if cfg != ref or (other, wk) not in by:
                continue
            oc = by[(other, wk)]
            matched.update({id(rc), id(oc)})
            for m in metrics:
                rv, ov = metric_value(rc, m), metric_value(oc, m)
                if rv.n == 0 and ov.n == 0:
                    continue
                r = stats.ratio(ov.samples, rv.samples)
                rows.append(CompareRow(wk, m, rc, oc, rv.summary(), ov.summary(), r, _judge(m, r, rc, oc),
                                       rv.meter, ov.meter))
    overall = {}
    for other in configs[1:]:
        for m in metrics:
            rs = [r for r in rows if r.other.config_key == other and r.metric == m and r.ref.ok and r.other.ok]
            if len(rs) >= 2:
                overall[(other, m)] = stats.paired_ratio([r.other_summary.median for r in rs],
                                                         [r.ref_summary.median for r in rs])
    unmatched = [c for c in cells if id(c) not in matched]
    return Comparison(configs, labels, rows, overall, unmatched)


def _wk(wk: tuple) -> str:
    model, prec, batch, p, g, scen = wk
    return f"{model} {prec} b{batch} pp{p}+tg{g}" + ("" if scen == "offline" else f" {scen}")


def compare_value(s: stats.Summary, cell: Cell, meter: dict | None) -> str:
    if cell.get("status") == "failed":
        return "FAILED"
    text = _med_ci(s, 3) + _energy_tag(meter)
    return f"INVALID {text}" if cell.invalid else text


def compare_markdown(cmp: Comparison) -> str:
    ref = cmp.configs[0]
    out = ["# Comparison", "", f"Reference (A): **{cmp.config_labels[ref]}**", ""]
    for other in cmp.configs[1:]:
        out += [f"## {cmp.config_labels[other]} (B) against A", ""]
        rows = [r for r in cmp.rows if r.other.config_key == other]
        if not rows:
            out += ["No matching cells (same model, precision, batch, prompt and generation length, scenario).", ""]
            continue
        out += ["| workload | metric | A median [95% CI] | B median [95% CI] | B / A [95% CI] | B is |",
                "|---|---|---:|---:|---:|---|"]
        for r in rows:
            unit = METRICS[r.metric].unit
            out.append(f"| {_wk(r.workload)} | {r.metric} ({unit}) | {compare_value(r.ref_summary, r.ref, r.ref_meter)} | "
                       f"{compare_value(r.other_summary, r.other, r.other_meter)} | "
                       f"{_ratio_text(r.ratio)} | {r.judgement} |")
        ov = [(m, cmp.overall[(other, m)]) for m in COMPARE_METRICS if (other, m) in cmp.overall]
        if ov:
            out += ["", "Across matching workloads (geometric mean of B / A, workloads resampled in pairs):", ""]
            out += [f"- {m}: {_ratio_text(r)} over {r.n_a} workloads" for m, r in ov]
        out.append("")
    if cmp.unmatched:
        out += ["## Cells without a match", ""] + [f"- {c.short} on {c.device_label}" for c in cmp.unmatched] + [""]
    out += ["_Ratios are B / A of the metric as measured (for TTFT, TPOT and J/token lower is better). "
            "Medians with 95 % bootstrap intervals; \"no clear difference\" means the interval of the ratio "
            "contains 1._", ""]
    return "\n".join(out)


def _ratio_text(r: stats.Ratio) -> str:
    if r.ratio is None:
        return "-"
    return f"{stats.fmt_num(r.ratio, 3)}x {stats.fmt_ci(r.ci_low, r.ci_high)}"

