"""The report's physical-bounds section: each measured cell next to what its catalog device
can physically do (harness.bounds), measured as a percentage of the bound.

  throughput: measured decode tok/s / bound tok/s x 100
  energy:     floor J/token / measured J/token x 100 (the share of the measured energy that
              physics requires; 100 % is the floor)
Above 100 % on either is SUSPECT, as a roofline above 100 % is: a measurement error, never
a win. A cell maps to a catalog device by its device name (the catalog's `match:` names);
cells on devices the catalog does not know are left out and counted.
"""
from __future__ import annotations

from harness.bounds import fmt_j, fmt_tps
from harness.cells import ResultCell
from harness.figures import metric_value
from harness.report.document import Document, Table


def add_bounds_section(doc: Document, cells: list[ResultCell]) -> None:
    from harness.catalog import device_name, shipped_catalog
    from harness.verdicts import PARTIAL_SCOPES, cell_bound, plain_median

    cat = shipped_catalog()
    t = Table(["cell", "catalog device", "decode tok/s", "bound tok/s", "% of bound", "J/token", "floor J/token",
               "floor % of measured"], right=("decode tok/s", "bound tok/s", "% of bound", "J/token", "floor J/token",
                                              "floor % of measured"))
    unknown = 0
    for c in cells:
        if not c.ok:
            continue
        dev = cat.for_name(device_name(c.record.device, c.meta.get("inventory") or {}))
        b = cell_bound(c, dev)
        if b is None:
            unknown += 1
            continue
        if (c.record.roofline or {}).get("decode_cache_resident"):
            continue  # weights in the measured cache: the off-chip bound does not apply
        tps = plain_median(metric_value(c, "decode_tps").samples)
        jv = metric_value(c, "j_per_token")
        j = plain_median(jv.samples) if jv.meter is not None and jv.meter.scope not in PARTIAL_SCOPES else None
        floor = b.decode.floor_j
        tp = 100 * tps / b.decode.tps if tps and b.decode.tps else None
        ep = 100 * floor / j if j and floor > 0 else None
        suspect = any(p is not None and p > 100 for p in (tp, ep))
        t.add([c.short, dev.name, fmt_tps(tps), fmt_tps(b.decode.tps), _pct(tp), fmt_j(j),
               fmt_j(floor) + (" *" if b.decode.missing else ""), _pct(ep)], "suspect" if suspect else None)
    if not t.rows:
        return  # no cell ran on a catalogued device: nothing to show
    doc.h(2, "Physical bounds")
    doc.p("Each cell against its catalog device (workloads/devices/, `harness bound`): decode tok/s as a percentage "
          "of the roofline bound from the published bandwidth and peak, and the physical floor on J/token as a "
          "percentage of the measured J/token. Above 100 % is SUSPECT (a measurement error, never a win). "
          "* marks a floor with a term whose constant is not published (left out: the floor is only lower)."
          + (f" {unknown} cell(s) ran on devices the catalog does not name." if unknown else ""))
    doc.table(t)


def _pct(p) -> str | None:
    return None if p is None else f"{p:.0f} %" + (" SUSPECT" if p > 100 else "")
