"""llama-bench-style tables: one row per cell and test (ppN = prefill, tgN = decode).

Built with pandas from result records only, so the same table comes out of a live run
and of a results folder read a year later.
"""
from __future__ import annotations

import pandas as pd


def _pm(m: dict | None, scale: float = 1.0, digits: int = 2) -> str:
    if not m or "mean" not in m:
        return "-"
    return f"{m['mean'] * scale:.{digits}f} ± {m['sd'] * scale:.{digits}f}"


def _params(n) -> str:
    if not n:
        return "-"
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def _energy(r: dict, phase: str) -> str:
    """J/token of the phase from the cell's primary meter, with its method, or why not."""
    e = r.get("energy") or {}
    if e.get("status") in ("disabled", "no meters"):
        return e["status"]
    meters = e.get("meters") or []
    avail = [m for m in meters if m.get(f"{phase}_j_per_token") is not None]
    if not avail:
        reasons = {m.get("reason") for m in meters if m.get("reason")}
        return "unavailable" + (f": {'; '.join(sorted(reasons))}" if reasons else "")
    m = avail[0]
    tag = "est." if m.get("method") == "estimate" else m.get("scope", "")
    return f"{m[f'{phase}_j_per_token']:.4g} ({tag})"


def _pct(v: float | None) -> str:
    """Roofline share; over 100 % cannot be real and is marked suspect."""
    if v is None:
        return "-"
    return f"{v:.0f} % SUSPECT" if v > 100 else f"{v:.0f} %"


def _accuracy(r: dict) -> str:
    a = r.get("accuracy") or {}
    if a.get("passed") is True:
        return f"ok {a['rel_err']:.0e}"
    if a.get("passed") is False:
        return f"INVALID {a.get('rel_err', float('nan')):.0e}" if "rel_err" in a else "INVALID"
    return a.get("status", "-")


def bench_rows(records: list[dict]) -> pd.DataFrame:
    rows = []
    for r in records:
        base = {"model": r.get("model"), "params": _params(r.get("params")), "dtype": r.get("precision", r.get("dtype")),
                "backend": r.get("backend"), "device": r.get("device", "-"), "batch": r.get("batch")}
        if r.get("status") == "failed":
            msg = (r.get("error") or {}).get("message", "")
            rows.append({**base, "test": f"pp{r.get('prompt_len')}+tg{r.get('gen_len')}", "t/s": "FAILED",
                         "% roof": "-", "J/token": "-", "accuracy": msg.splitlines()[0][:60] if msg else "-"})
            continue
        m = r.get("metrics") or {}
        acc = _accuracy(r)
        roof = r.get("roofline") or {}
        rows.append({**base, "test": f"pp{r['prompt_len']}", "t/s": _pm(m.get("prefill_tps")),
                     "% roof": _pct(roof.get("prefill_pct")), "J/token": _energy(r, "prefill"), "accuracy": acc})
        rows.append({**base, "test": f"tg{r['gen_len']}", "t/s": _pm(m.get("decode_tps")),
                     "% roof": _pct(roof.get("decode_pct")), "J/token": _energy(r, "decode"), "accuracy": acc})
    return pd.DataFrame(rows)


def to_markdown(df: pd.DataFrame) -> str:
    if df.empty:
        return "(no results)"
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---:" if c in ("batch", "t/s") else "---" for c in cols) + "|"]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(str(row[c]) for c in cols) + " |")
    return "\n".join(lines)


def print_table(df: pd.DataFrame, title: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for c in df.columns:
        table.add_column(c, justify="right" if c in ("batch", "t/s", "% roof", "J/token") else "left")
    for _, row in df.iterrows():
        style = "red" if "INVALID" in str(row.get("accuracy")) or row.get("t/s") == "FAILED" else None
        table.add_row(*(str(row[c]) for c in df.columns), style=style)
    Console(width=200).print(table)
