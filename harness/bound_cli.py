"""`harness bound`: what each catalog device can physically do on each workload.

    harness bound [--devices DIR] [--models a,b] [--batch 1 64 best] [--prompt 128] [--gen 128]
                  [--precision bf16] [--markdown FILE]

One row per workload x device: the bound on decode tokens/s (and what limits it), the floor
on J per generated token with its terms (memory, MAC, idle), and the best ratio that device
could have against any other on that workload (the other's floor / its own). harness.cli
calls ``add_bound_command(subparsers)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from harness.bounds import WEIGHT_BYTES, Bound, PhaseBound, bound_at, fmt_j, fmt_tps


@dataclass
class BoundRow:
    bound: Bound
    batch_label: str  # "1", "64", "best (1905)"
    best_ratio: Optional[float]  # the largest other floor / this floor on the same workload
    best_against: Optional[str]


def add_bound_command(subparsers) -> None:
    b = subparsers.add_parser(
        "bound", help="physical bounds: tokens/s and J/token floors of catalog devices on zoo workloads",
        description="For each workload (model, precision, batch, lengths) and each catalog device: the roofline bound "
                    "on decode tokens/s (memory or compute), the floor on J per generated token (bytes x energy per "
                    "bit + MACs x energy per MAC + idle power x bound time, each term shown), and the best ratio the "
                    "device could have against any other. Terms whose constants are not published are left out, so "
                    "a floor stays a floor.")
    b.add_argument("--devices", action="append", metavar="DIR", default=[],
                   help="also read this folder (or file) of device YAML (see workloads/devices/); repeatable")
    b.add_argument("--only", metavar="NAMES", help="comma-separated catalog device names to show (default: all)")
    b.add_argument("--models", metavar="NAMES", help="comma-separated zoo models (default: every zoo model)")
    b.add_argument("--batch", nargs="+", default=["1", "64"], metavar="N",
                   help="batch sizes, or `best` (the largest batch the device's memory holds) (default: 1 64)")
    b.add_argument("--prompt", type=int, default=128, metavar="N", help="prompt length (default 128)")
    b.add_argument("--gen", type=int, default=128, metavar="N", help="generated tokens (default 128)")
    b.add_argument("--precision", default="bf16", help=f"weight precision: {', '.join(WEIGHT_BYTES)} (default bf16)")
    b.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")
    b.set_defaults(func=cmd_bound)


def _user_error(msg: str):
    from harness.cli import UserError

    return UserError(msg)


def _batches(values: list[str]) -> list[int | str]:
    out: list[int | str] = []
    for v in values:
        if v == "best":
            out.append(v)
        elif v.isdigit() and 1 <= int(v) <= 1 << 20:
            out.append(int(v))
        else:
            raise _user_error(f"--batch {v}: expected a batch size >= 1 or `best`")
    return out


def floor_ratio(other: PhaseBound, this: PhaseBound) -> Optional[float]:
    """other's floor / this one's over the terms both know: a term one catalog entry lacks
    (not published) would otherwise count as zero on one side only and inflate the ratio."""
    common = {t.name for t in other.terms if t.joules is not None} & {t.name for t in this.terms if t.joules is not None}
    o = sum(t.joules for t in other.terms if t.name in common)
    m = sum(t.joules for t in this.terms if t.name in common)
    return o / m if m > 0 and o > 0 else None


def bound_rows(devices, models, precision: str, batches: list[int | str], prompt_len: int,
               gen_len: int) -> list[BoundRow]:
    """Every (model, batch) x device bound, with each device's best floor ratio against the others."""
    rows: list[BoundRow] = []
    for m in models:
        for b in batches:
            group = [bound_at(d, m, precision, b, prompt_len, gen_len) for d in devices]
            for bd in group:
                others = [(r, o.device.name) for o in group if o is not bd
                          for r in [floor_ratio(o.decode, bd.decode)] if r is not None]
                ratio, against = max(others) if others else (None, None)
                label = str(b) if b != "best" else f"best ({'inf' if bd.workload.batch is None else bd.workload.batch})"
                rows.append(BoundRow(bd, label, ratio, against))
    return rows


COLUMNS = ("model", "precision", "batch", "device", "bound tok/s", "limit", "floor J/token", "memory", "MAC", "idle",
           "best ratio vs any other", "fits")


def row_cells(r: BoundRow) -> list[str]:
    bd, d = r.bound, r.bound.decode
    terms = {t.name: t for t in d.terms}
    fits = {True: "yes", False: f"no ({bd.footprint_bytes / 1e9:.0f} GB)", None: "?"}[bd.fits]
    floor = fmt_j(d.floor_j) + (" *" if d.missing else "")
    memory = "on-chip" if bd.on_chip else fmt_j(terms["memory"].joules)
    if r.best_ratio is None:
        best = "-"
    else:  # a tie (equal floors on the terms both know) is no advantage
        best = f"{r.best_ratio:.3g}x vs {r.best_against}" if r.best_ratio >= 1.005 else "none"
    return [bd.workload.model.name, bd.workload.precision, r.batch_label, bd.device.name, fmt_tps(d.tps), d.limit,
            floor, memory, fmt_j(terms["mac"].joules), fmt_j(terms["idle"].joules), best, fits]


NOTE = ("bound tok/s: decode tokens/s over the whole batch, min(bandwidth / bytes per token, peak / FLOPs per token); "
        "'-' where neither is published. floor J/token: per generated token, memory + MAC + idle terms; * marks a "
        "floor with a term left out (its constant is not published), which makes it lower, never higher. best "
        "ratio: the largest (other device's floor / this device's floor) on the same workload, over the terms both "
        "floors have ('none': no device's floor is higher). memory 'on-chip': weights and KV cache fit the device's "
        "published on-chip memory, so no off-chip bytes. fits: weights + KV "
        "cache within one device's memory.")


def markdown(rows: list[BoundRow], title: str) -> str:
    out = [f"# {title}", "", "| " + " | ".join(COLUMNS) + " |",
           "|" + "|".join("---:" if c in ("batch", "bound tok/s", "floor J/token", "memory", "MAC", "idle") else "---"
                          for c in COLUMNS) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in row_cells(r)) + " |" for r in rows]
    return "\n".join(out + ["", NOTE, ""])


def cmd_bound(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from harness.catalog import load_catalog
    from workloads.zoo import ZOO

    if args.precision not in WEIGHT_BYTES:
        raise _user_error(f"--precision {args.precision}: expected one of {', '.join(WEIGHT_BYTES)}")
    for flag, v in (("--prompt", args.prompt), ("--gen", args.gen)):
        if not 1 <= v <= 1 << 20:
            raise _user_error(f"{flag} {v}: expected a length from 1 to {1 << 20}")
    names = [m.strip() for m in args.models.split(",")] if args.models else list(ZOO)
    bad = [n for n in names if n not in ZOO]
    if bad:
        raise _user_error(f"--models {bad[0]}: not a zoo model; known: {', '.join(ZOO)}")
    catalog = load_catalog(args.devices)  # ConfigError: file:line: key (exit 2)
    devices = list(catalog.devices.values())
    if args.only:
        want = [n.strip() for n in args.only.split(",")]
        missing = [n for n in want if catalog.get(n) is None]
        if missing:
            raise _user_error(f"--only {missing[0]}: not a catalog device; known: {', '.join(catalog.devices)}")
        devices = [catalog.get(n) for n in want]
    rows = bound_rows(devices, [ZOO[n] for n in names], args.precision, _batches(args.batch), args.prompt, args.gen)

    title = (f"physical bounds, decode, prompt {args.prompt} / generation {args.gen}, {args.precision} "
             f"({len(devices)} devices from {len(catalog.sources)} catalog files)")
    t = Table(title=title, title_justify="left")
    for c in COLUMNS:
        t.add_column(c, justify="right" if c in ("batch", "bound tok/s", "floor J/token", "memory", "MAC", "idle")
                     else "left")
    prev = None
    for r in rows:
        key = (r.bound.workload.model.name, r.batch_label.split(" ")[0])
        if prev is not None and key != prev:
            t.add_section()
        prev = key
        t.add_row(*row_cells(r))
    console = Console(width=max(190, Console().width))
    console.print(t)
    console.print(NOTE, highlight=False)
    if args.markdown:
        from harness.report.commands import _write

        _write(Path(args.markdown), markdown(rows, title))
        print(f"wrote {args.markdown}")
    return 0
