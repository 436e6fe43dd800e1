"""llama-bench-style tables: one row per cell and test (ppN = prefill, tgN = decode).

Built with pandas from result records only, so the same table comes out of a live run
and of a results folder read a year later.
"""
from __future__ import annotations

from typing import Optional

import pandas as pd

from harness import stats
from harness.figures import energy_unavailable_reason, meter_figure, primary_meter
from harness.records import CellRecord


def _pm(m: Optional[dict], scale: float = 1.0, digits: int = 2) -> str:
    # a record from elsewhere may lack `sd` (the reader checks types, not completeness)
    if not isinstance(m, dict) or not isinstance(m.get("mean"), (int, float)):
        return "-"
    sd = m.get("sd")
    return (f"{m['mean'] * scale:.{digits}f} ± {sd * scale:.{digits}f}" if isinstance(sd, (int, float))
            else f"{m['mean'] * scale:.{digits}f}")


def _params(n) -> str:
    if not n:
        return "-"
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def energy_text(r: CellRecord, metric: str) -> str:
    """A J/token figure (gross) from the cell's primary meter, with its scope, or why not.

    The same for batch and request scenarios: both carry one energy shape. The primary
    meter is a measurement before an estimate and a full window before a short one; an
    estimate is always labelled "estimate", a short window "short".
    """
    if r.energy is not None and r.energy.status in ("disabled", "no meters"):
        return r.energy.status
    m = primary_meter(r, metric)
    if m is None:
        return energy_unavailable_reason(r).replace("no energy figure", "unavailable")
    tag = "estimate" if m.is_estimate else (m.scope or "") + (", short" if m.quality == "short-window" else "")
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


def _ci_texts(metric_dicts: list[Optional[dict]]) -> list[str]:
    """median [95 % bootstrap CI] of each metric's samples (harness.stats), all bootstrapped
    together (stats.summarize_many)."""
    have = [i for i, m in enumerate(metric_dicts) if m and m.get("samples")]
    sums = stats.summarize_many([metric_dicts[i]["samples"] for i in have])
    out = ["-"] * len(metric_dicts)
    for i, s in zip(have, sums):
        out[i] = f"{stats.fmt_num(s.median)} {stats.fmt_ci(s.ci_low, s.ci_high, 4)}"
    return out


def bench_rows(records: list[CellRecord], ci: bool = False) -> pd.DataFrame:
    """One row per cell and test. ci=True adds the median with its 95 % bootstrap
    interval and the number of repetitions. Invalid cells say INVALID in the t/s column too."""
    rows = []
    ci_of: list[Optional[dict]] = []
    for r in records:
        base = {"model": r.model, "params": _params(r.params), "dtype": r.shown_precision,
                "backend": r.backend, "device": r.device, "batch": r.batch}
        if r.failed:
            msg = r.error.message if r.error else ""
            row = {**base, "test": f"pp{r.prompt_len}+tg{r.gen_len}", "t/s": "FAILED"}
            if ci:
                row.update({"median [95% CI]": "-", "n": "-"})
            rows.append({**row, "% roof": "-", "J/token": "-", "accuracy": msg.splitlines()[0][:60] if msg else "-"})
            continue
        m = r.metrics
        acc = _accuracy(r)
        roof = r.roofline or {}
        for test, key, metric, pct in ((f"pp{r.prompt_len}", "prefill_tps", "j_per_prompt_token", "prefill_pct"),
                                       (f"tg{r.gen_len}", "decode_tps", "j_per_token", "decode_pct")):
            tps = _pm(m.get(key))
            row = {**base, "test": test, "t/s": f"INVALID {tps}" if r.invalid else tps}
            if ci:
                row.update({"median [95% CI]": len(ci_of), "n": (m.get(key) or {}).get("n", "-")})
                ci_of.append(m.get(key))  # filled in below, every cell's interval at once
            rows.append({**row, "% roof": _pct(roof.get(pct)), "J/token": energy_text(r, metric), "accuracy": acc,
                         "placement": placement(r)})
    if ci_of:
        texts = _ci_texts(ci_of)
        for row in rows:
            if isinstance(row.get("median [95% CI]"), int):
                row["median [95% CI]"] = texts[row["median [95% CI]"]]
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

    table = Table(title=title, show_lines=False)
    for c in df.columns:
        table.add_column(c, justify="right" if c in ("batch", "t/s", "% roof", "J/token", "median [95% CI]", "n")
                         else "left")
    for _, row in df.iterrows():
        style = "red" if "INVALID" in str(row.get("accuracy")) or str(row.get("t/s")).startswith(("FAILED", "INVALID")) \
            else None
        table.add_row(*(str(row[c]) for c in df.columns), style=style)
    console = Console(width=200)
    console.print(table)
    for n in notes:
        console.print(n, highlight=False)
