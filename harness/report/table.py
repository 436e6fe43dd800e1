"""llama-bench-style tables: one row per cell and test (ppN = prefill, tgN = decode).

Built with pandas from result records only, so the same table comes out of a live run
and of a results folder read a year later.
"""
from __future__ import annotations

from typing import Optional

import pandas as pd

from harness import stats
from harness.cells import ResultCell
from harness.figures import energy_unavailable_reason, meter_figure, primary_keys, primary_meter
from harness.records import CellRecord


#: appended to a t/s figure whose 95 % interval is wider than the stable share of its median
NOISY = "~"
NOISY_NOTE = (f"{NOISY} noisy: the 95 % interval's half-width exceeds {100 * stats.STABLE_REL_HALF_WIDTH:g} % of the "
              "median; more repetitions or a quieter machine narrow it")
CENTRAL_NOTE = "t/s: median [95 % bootstrap interval] of the timed repetitions (mean and sd stay in results.jsonl)"


def _central_texts(metric_dicts: list[Optional[dict]]) -> list[str]:
    """The one central figure of each metric: the median with its 95 % bootstrap interval
    (harness.stats, as report.md shows it), all bootstrapped together, and the noisy
    marker where the interval is wider than stats.STABLE_REL_HALF_WIDTH of the median.

    A record without samples (written elsewhere) shows its median alone, or "-"."""
    out = ["-"] * len(metric_dicts)
    have = []
    for i, m in enumerate(metric_dicts):
        if not isinstance(m, dict):
            continue
        samples = m.get("samples")
        if isinstance(samples, list) and samples and all(isinstance(v, (int, float)) for v in samples):
            have.append(i)
        elif isinstance(m.get("median"), (int, float)):
            out[i] = stats.fmt_num(m["median"])
    for i, s in zip(have, stats.summarize_many([metric_dicts[i]["samples"] for i in have])):
        text = stats.fmt_num(s.median)
        if s.ci_low is not None and s.ci_high is not None:
            text += f" {stats.fmt_ci(s.ci_low, s.ci_high, 4)}"
        rhw = s.rel_half_width
        if rhw is not None and rhw > stats.STABLE_REL_HALF_WIDTH:
            text += f" {NOISY}"
        out[i] = text
    return out


def _params(n) -> str:
    if not n:
        return "-"
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def energy_text(cell: CellRecord | ResultCell, metric: str) -> str:
    """A J/token figure (gross) from the cell's primary meter, with its scope, or why not.

    The same for batch and request scenarios: both carry one energy shape. The meter is
    harness.figures.primary_meter's, the rule the headline and verdicts use: the suite's
    `primary: true` meter (known from a ResultCell's run.json; a bare record has none), then
    a measurement before an estimate and a full window before a short one, then the widest
    scope. An estimate is always labelled "estimate", a short window "short".
    """
    r = cell.record if isinstance(cell, ResultCell) else cell
    if r.energy is not None and r.energy.status in ("disabled", "no meters"):
        return r.energy.status
    m = primary_meter(r, metric, primary=primary_keys(cell.meta) if isinstance(cell, ResultCell) else ())
    if m is None:
        return energy_unavailable_reason(r).replace("no energy figure", "unavailable")
    tag = "estimate" if m.is_estimate else (m.scope or "") + (", short" if m.quality == "short-window" else "")
    if m.quality == "speed-mismatch":  # measured on work that ran at another speed: see the record's reason
        tag += ", SPEED MISMATCH"
    return f"{meter_figure(m, metric):.4g} ({tag})"


def _pct(v: float | None) -> str:
    """Roofline share; over 100 % cannot be real and is marked suspect."""
    if v is None:
        return "-"
    return f"{v:.0f} % SUSPECT" if v > 100 else f"{v:.0f} %"


def _accuracy(r: CellRecord) -> str:
    a = r.accuracy
    if a.get("passed") is True:
        return f"ok {a['rel_err']:.0e}"
    if a.get("passed") is False:
        timed = a.get("timed_output") or {}
        if a.get("logits_passed") is not False and timed.get("passed") is False:  # the timed tokens were wrong
            return f"INVALID timed {100 * timed.get('agreement', 0.0):.0f}%"
        return f"INVALID {a.get('rel_err', float('nan')):.0e}" if "rel_err" in a else "INVALID"
    return a.get("status", "-")


def bench_rows(records: list[CellRecord | ResultCell], ci: bool = False) -> pd.DataFrame:
    """One row per cell and test. t/s is the one central figure: the median with its 95 %
    bootstrap interval, marked noisy (NOISY) where the interval is wide. ci=True adds the
    number of repetitions. Invalid cells say INVALID in the t/s column too. A ResultCell's
    energy honours its suite's `primary: true` meter (energy_text)."""
    rows = []
    central_of: list[Optional[dict]] = []
    invalid_rows: set[int] = set()
    for cell in records:
        r = cell.record if isinstance(cell, ResultCell) else cell
        base = {"model": r.model, "params": _params(r.params), "dtype": r.shown_precision,
                "backend": r.backend, "device": r.device, "batch": r.batch}
        if r.failed:
            msg = r.error.message if r.error else ""
            row = {**base, "test": f"pp{r.prompt_len}+tg{r.gen_len}", "t/s": "FAILED"}
            if ci:
                row["n"] = "-"
            rows.append({**row, "% roof": "-", "J/token": "-", "accuracy": msg.splitlines()[0][:60] if msg else "-"})
            continue
        m = r.metrics
        acc = _accuracy(r)
        roof = r.roofline or {}
        for test, key, metric, pct in ((f"pp{r.prompt_len}", "prefill_tps", "j_per_prompt_token", "prefill_pct"),
                                       (f"tg{r.gen_len}", "decode_tps", "j_per_token", "decode_pct")):
            if r.invalid:
                invalid_rows.add(len(central_of))
            row = {**base, "test": test, "t/s": len(central_of)}  # filled in below, every interval at once
            central_of.append(m.get(key))
            if ci:
                row["n"] = (m.get(key) or {}).get("n", "-")
            rows.append({**row, "% roof": _pct(roof.get(pct)), "J/token": energy_text(cell, metric), "accuracy": acc,
                         "placement": placement(r)})
    texts = _central_texts(central_of)
    for row in rows:
        i = row["t/s"]
        if isinstance(i, int):
            row["t/s"] = f"INVALID {texts[i]}" if i in invalid_rows else texts[i]
    df = pd.DataFrame(rows)
    if "placement" in df.columns and not (df["placement"].fillna("") != "").any():
        df = df.drop(columns="placement")  # no backend here reports node placement
    return df


def placement(r: CellRecord) -> str:
    """Which execution provider ran the graph (ONNX Runtime): silent CPU fallback is the
    classic way an NPU benchmark lies, so the split is shown wherever it is known."""
    p = (r.load.get("details") or {}).get("placement") or {}
    if not p:
        return ""
    text = p.get("summary") or ", ".join(f"{k}: {v}" for k, v in (p.get("nodes_per_provider") or {}).items())
    share = p.get("compute_share_off_requested") or 0
    if share > 0:
        text += f"; {100 * share:.0f} % of compute off {p.get('requested_provider', 'the requested provider')}"
    return text


def footnote_reasons(df: pd.DataFrame, columns: tuple[str, ...] = ("J/token", "J/out-token")
                     ) -> tuple[pd.DataFrame, list[str]]:
    """Replace long "unavailable (why)" cells by "unavailable [n]" and return the reasons
    once each, so a reason shared by every row does not widen every row."""
    notes: list[str] = []

    def short(v):
        v = str(v)
        if " (" not in v or not v.startswith(("unavailable", "energy ", "no energy")):
            return v
        head, why = v.split(" (", 1)
        why = why.rstrip(")")
        if why not in notes:
            notes.append(why)
        return f"{head} [{notes.index(why) + 1}]"

    out = df.copy()
    for column in columns:
        if column in out.columns:
            out[column] = out[column].map(short)
    return out, [f"[{i + 1}] {n}" for i, n in enumerate(notes)]


def print_table(df: pd.DataFrame, title: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    df, notes = footnote_reasons(df)

    if "t/s" in df.columns and len(df):
        notes.insert(0, CENTRAL_NOTE)
        if df["t/s"].astype(str).str.endswith(f" {NOISY}").any():
            notes.insert(1, NOISY_NOTE)

    table = Table(title=title, show_lines=False)
    for c in df.columns:
        table.add_column(c, justify="right" if c in ("batch", "t/s", "% roof", "J/token", "n") else "left")
    for _, row in df.iterrows():
        style = "red" if "INVALID" in str(row.get("accuracy")) or str(row.get("t/s")).startswith(("FAILED", "INVALID")) \
            else None
        table.add_row(*(str(row[c]) for c in df.columns), style=style)
    console = Console(width=200)
    console.print(table)
    for n in notes:
        console.print(n, highlight=False)
