"""The procurement headline ("At a glance"): per device, the best generated tokens per
joule and the lowest cost per million generated tokens, each with the meter it was read
from and why that meter, and the best decode throughput.

Which meter: the one rule every table and verdict uses (harness.figures.primary_meter:
the suite's `primary: true` meter, then the better quality, then the widest scope, then
the first configured), so a cell's figure here and in the tables comes from one meter.
One meter per device, so every cell of the device is ranked on the same meter: the one a
`primary: true` mark names wherever it has a figure, else the one the rule picks for most
of the device's cells. A best cell whose own pick is another meter (its meters differ from
the rest) says so beside its figure.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from harness import stats
from harness.cells import ResultCell
from harness.figures import METRICS, is_marked, meter_rank, metric_value, primary_meter, why_meter
from harness.figures import primary_keys as run_primary_keys
from harness.records import MeterEnergy
from harness.report.cell_summary import CellSummary, energy_tag, fmt
from harness.report.document import Table
from harness.report.prices import CostPerMillion, Prices, cost_per_million

#: meter qualities whose figure may head the table (others are shown only when nothing else is)
TRUSTED = ("ok", "short-window", "estimate")


@dataclass
class MeterChoice:
    meter: str  # MeterEnergy.meter
    scope: str
    method: str
    why: str

    def text(self) -> str:
        return f"{self.meter} ({self.method}, {self.scope}): {self.why}"


@dataclass
class Best:
    cell: ResultCell
    text: str  # the figure as shown, median [95 % CI] or a cost


@dataclass
class DeviceHeadline:
    device: str
    choice: Optional[MeterChoice]
    tokens_per_joule: Optional[Best]
    cost: Optional[Best]
    decode: Optional[Best]
    no_energy: str = ""  # why there is no energy figure on this device


def primary_keys(cells: list[ResultCell]) -> dict[str, tuple[str, ...]]:
    """run id -> the meter names its suite marks `primary: true` (harness.figures.primary_keys
    of its run.json: a meter's name, or its type, which every default meter name starts with:
    nvml:0, rapl:package-0, csv-log:file)."""
    out: dict[str, tuple[str, ...]] = {}
    for c in cells:
        if c.run_id not in out:
            out[c.run_id] = run_primary_keys(c.meta)
    return out


def choose_meter(cells: list[ResultCell], primary: dict[str, tuple[str, ...]]) -> Optional[MeterChoice]:
    """The one meter a device's headline quotes (None when no cell has a tokens/J figure):
    each valid cell's own meter by the one rule (harness.figures.primary_meter), then the
    meter a `primary: true` mark names, else the one picked for most cells, else by the rule."""
    picks: dict[str, list[tuple[ResultCell, MeterEnergy]]] = {}
    for c in cells:
        if not c.ok or c.record.energy is None:
            continue
        m = primary_meter(c.record, "tokens_per_joule", primary=primary.get(c.run_id, ()))
        if m is not None:
            picks.setdefault(m.meter, []).append((c, m))
    if not picks:
        return None
    n = sum(len(v) for v in picks.values())

    def rank(name: str) -> tuple:
        c, m = picks[name][0]
        marked = any(is_marked(name, primary.get(c2.run_id, ())) for c2, _ in picks[name])
        return (not marked, -len(picks[name]), meter_rank(m, 0)[1:3], name)

    name = min(picks, key=rank)
    c, best = picks[name][0]
    why = why_meter(c.record, best, primary=primary.get(c.run_id, ()))
    if len(picks[name]) < n:
        others = ", ".join(f"{k}: {len(v)}" for k, v in sorted(picks.items()) if k != name)
        why += f"; the rule picks it for {len(picks[name])} of {n} cells ({others})"
    return MeterChoice(best.meter, best.scope or "-", best.method or "-", why)


def _with_meter(c: ResultCell, name: str) -> Optional[ResultCell]:
    """The cell seen through one meter only (None when that meter has no figure for it)."""
    e = c.record.energy
    ms = [m for m in (e.meters if e else []) if m.meter == name]
    if not ms:
        return None
    return replace(c, record=replace(c.record, energy=replace(e, meters=ms)))


def device_headline(device: str, cells: list[ResultCell], sums: dict[int, CellSummary], label,
                    prices: Optional[Prices], primary: dict[str, list[str]]) -> DeviceHeadline:
    ok = [c for c in cells if c.ok]
    h = DeviceHeadline(device, choose_meter(cells, primary), None, None, None)
    dec = [c for c in ok if sums[id(c)].med("decode_tps") is not None]
    if dec:
        b = max(dec, key=lambda c: sums[id(c)].med("decode_tps"))
        h.decode = Best(b, _median_text(sums[id(b)].summaries["decode_tps"], "decode_tps") + f" — {_at(b, label)}")
    metered: list[tuple[ResultCell, ResultCell]] = []  # (cell, the cell through the chosen meter)
    if h.choice is not None:
        metered = [(c, v) for c in ok if (v := _with_meter(c, h.choice.meter)) is not None]
    else:
        reasons = sorted({sums[id(c)].reasons.get("tokens_per_joule") or "" for c in cells} - {""})
        h.no_energy = "; ".join(reasons) or "no energy figure"
    vals = [(c, v, metric_value(v, "tokens_per_joule")) for c, v in metered]
    vals = [t for t in vals if t[2].n]
    if vals:
        # a figure flagged untrustworthy (speed mismatch, clock skew) is best only where no other is
        c, v, mv = max(vals, key=lambda t: (t[2].meter.quality in TRUSTED, stats.median(t[2].samples)))
        h.tokens_per_joule = Best(c, _median_text(mv.summary(), "tokens_per_joule") + energy_tag(mv.meter)
                                  + f" — {_at(c, label)}" + _own_meter_note(c, h.choice.meter, primary))
    if prices is not None and ok:
        meter_of = {id(c): v.record.energy.meters[0] for c, v in metered}
        costs = [(c, cost_per_million(c, meter_of.get(id(c)), prices)) for c in ok]
        costs = [(c, k) for c, k in costs if k.hardware is not None or k.energy is not None]
        if costs:
            c, k = min(costs, key=lambda t: _cost_rank(t[1]))
            notes = [n for n in k.notes if n != "no energy figure"]
            h.cost = Best(c, k.text(prices.currency) + (f" ({'; '.join(notes)})" if notes else "")
                          + f" — {_at(c, label)}")
    return h


def _own_meter_note(c: ResultCell, device_meter: str, primary: dict[str, tuple[str, ...]]) -> str:
    """Said where this cell's tables quote another meter than the device's headline meter
    (its own meters differ from the device's other cells), so two figures of one cell are
    never shown without a word."""
    keys = primary.get(c.run_id, ())
    own = primary_meter(c.record, "tokens_per_joule", primary=keys)
    if own is None or own.meter == device_meter:
        return ""
    return (f" (this cell's tables quote {own.meter} ({own.scope or '-'}): "
            f"{why_meter(c.record, own, primary=keys)})")


def _cost_rank(k: CostPerMillion) -> tuple:
    """A complete cost (hardware + energy) ranks before any incomplete one: an incomplete
    cost is lower only because a share is missing."""
    if k.total is not None:
        return (0, k.total)
    return (1, k.hardware if k.hardware is not None else k.energy)


def _median_text(s: stats.Summary, metric: str) -> str:
    return f"{fmt(s.median)} {METRICS[metric].unit} {stats.fmt_ci(s.ci_low, s.ci_high, 3)}"


def _at(c: ResultCell, label) -> str:
    r = c.record
    return f"{label(c)}, batch {r.batch}, pp{r.prompt_len}+tg{r.gen_len}"


def headline_table(heads: list[DeviceHeadline], prices: Optional[Prices]) -> Table:
    """One row per device: what a buyer compares first."""
    cols = ["device", "best generated tokens/J [95% CI] (where)"]
    if prices is not None:
        cols.append(f"lowest cost per 1M generated tokens ({prices.currency}): hardware + energy (where)")
    cols += ["energy meter used (why)", "best decode tok/s [95% CI] (where)"]
    t = Table(cols, caption="Medians with 95 % bootstrap intervals. tokens/J: gross, over whole requests (prefill "
                            "included), from the meter named; cost: hardware over its lifetime and utilisation plus "
                            "electricity at that meter's tokens/J, a total only when both are known")
    for h in heads:
        row = [h.device, h.tokens_per_joule.text if h.tokens_per_joule else f"none: {h.no_energy or 'no figure'}"]
        if prices is not None:
            row.append(h.cost.text if h.cost else "-")
        row += [h.choice.text() if h.choice else "none", h.decode.text if h.decode else "-"]
        t.add(row)
    return t
