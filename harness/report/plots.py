"""Report figures as PNG bytes (matplotlib, Agg canvas: no display, no global pyplot state).

Conventions in every figure: one colour per configuration (backend, precision,
workload), one marker shape per device; INVALID cells (failed the accuracy gate) are red
crosses labelled INVALID and are never joined into a line or a Pareto front; energy
estimates are hollow markers labelled "estimate".
"""
from __future__ import annotations

from dataclasses import dataclass, field
import io
import math
from typing import Optional, Sequence

from harness.report.timeline import PowerSample

INVALID_COLOR = "#d62728"
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
#: above this many points in a panel, points are not labelled one by one (batch size, INVALID): thousands of
#: labels are unreadable and cost most of a report's time at lab scale (issue 21)
MAX_ANNOTATED = 80
#: legend entries shown; the rest are counted in one last entry
MAX_LEGEND = 24
#: above this many configurations (lines) in a figure, their lines are drawn as one line collection and their
#: markers in one call per colour, marker and fill, not one artist per configuration: the same colours, markers
#: and points, drawn in another order (lines under all markers). Thousands of artists took most of a 10,000-record
#: report's time (issue 21); small runs keep one artist per configuration, their figures unchanged.
MAX_SERIES_ARTISTS = 80
PHASE_COLORS = {"idle-before": "#e8e8e8", "prefill": "#fde2b8", "generation": "#cfe6f7", "idle-after": "#e8e8e8",
                "between": "#ffffff"}


@dataclass
class CellPoint:
    """One cell's medians, for the against-batch panels and the trade-off panels."""

    label: str  # its configuration (one colour each)
    device: str  # one marker shape each
    batch: int
    decode_tps: Optional[float]
    j_per_token: Optional[float]
    tokens_per_joule: Optional[float]
    tpot_ms: Optional[float]
    valid: bool  # passed the accuracy gate (INVALID cells are drawn apart, never joined)
    estimate: bool  # its energy figure is an estimate

    def value(self, key: str) -> Optional[float]:
        """A panel's figure by name: decode_tps, j_per_token, tokens_per_joule."""
        return getattr(self, key)


@dataclass
class Series:
    """One configuration's cells on one device: a line in the against-batch panels."""

    label: str
    device: str
    points: list[CellPoint] = field(default_factory=list)


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def pareto_front(xs: Sequence[float], ys: Sequence[float], *, x_higher_better: bool, y_higher_better: bool) -> list[int]:
    """Indices of the points no other point beats on both axes (ties kept), sorted by x.

    One sweep from the best x down (n log n, not every pair): a point is beaten when a point of
    strictly better x has a y at least as good, or a point of the same x has a strictly better y."""
    sx = 1 if x_higher_better else -1
    sy = 1 if y_higher_better else -1
    pts = sorted(((sx * x, sy * y, i) for i, (x, y) in enumerate(zip(xs, ys)) if x is not None and y is not None),
                 key=lambda t: -t[0])
    front = []
    best_before = -math.inf  # the best y among points of strictly better x
    k = 0
    while k < len(pts):
        group = [pts[k]]
        while k + len(group) < len(pts) and pts[k + len(group)][0] == pts[k][0]:
            group.append(pts[k + len(group)])
        top = max(t[1] for t in group)
        front += [t[2] for t in group if t[1] == top and t[1] > best_before]
        best_before = max(best_before, top)
        k += len(group)
    return sorted(sorted(front), key=lambda i: xs[i])


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#666", fontsize=9, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def batch_figure(series: list[Series]) -> bytes:
    """Decode tokens/s, J/token and tokens/J against batch size."""
    fig = _figure(12, 3.9)
    axes = fig.subplots(1, 3)
    panels = [("decode_tps", "decode tokens/s", "higher is better"), ("j_per_token", "J per generated token", "lower is better"),
              ("tokens_per_joule", "generated tokens per joule", "higher is better")]
    devices = sorted({s.device for s in series})
    if len(series) > MAX_SERIES_ARTISTS:
        return _batch_figure_collected(fig, axes, panels, series, devices)
    for ax, (key, title, hint) in zip(axes, panels):
        drawn = False
        for i, s in enumerate(series):
            color = PALETTE[i % len(PALETTE)]
            marker = MARKERS[devices.index(s.device) % len(MARKERS)]
            pts = sorted((p for p in s.points if p.value(key) is not None), key=lambda p: p.batch)
            ok = [p for p in pts if p.valid]
            if ok:
                est = any(p.estimate for p in ok) and key != "decode_tps"
                ax.plot([p.batch for p in ok], [p.value(key) for p in ok], marker=marker, color=color,
                        markerfacecolor="white" if est else color, linestyle="--" if est else "-",
                        label=s.label + (" (estimate)" if est else ""))
                drawn = True
            bad = [p for p in pts if not p.valid]
            if bad:  # one call for all of a series' INVALID points
                ax.plot([p.batch for p in bad], [p.value(key) for p in bad], marker="x", color=INVALID_COLOR,
                        markersize=9, mew=2, linestyle="")
                drawn = True
            if len(bad) <= MAX_ANNOTATED:
                for p in bad:
                    ax.annotate("INVALID", (p.batch, p.value(key)), textcoords="offset points", xytext=(4, 4),
                                color=INVALID_COLOR, fontsize=7)
        _finish_batch_panel(ax, key, title, hint, drawn, series)
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    return _batch_legend(fig, handles, labels)


def _finish_batch_panel(ax, key: str, title: str, hint: str, drawn: bool, series: list[Series]) -> None:
    ax.set_title(f"{title}\n({hint})", fontsize=10)
    ax.set_xlabel("batch size")
    if not drawn:
        _no_data(ax, "no measurement" if key == "decode_tps" else "no energy measurement\nfor these cells")
        return
    ax.set_xscale("log", base=2)
    ax.grid(True, alpha=0.3)
    batches = sorted({p.batch for s in series for p in s.points})
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.minorticks_off()


def _batch_legend(fig, handles: list, labels: list[str]) -> bytes:
    handles, labels = _capped_legend(handles, labels)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(3, len(labels)), fontsize=8, frameon=False)
    return to_png(fig)


def _batch_figure_collected(fig, axes, panels, series: list[Series], devices: list[str]) -> bytes:
    """batch_figure over more than MAX_SERIES_ARTISTS configurations: each panel's lines in one
    LineCollection (solid, and dashed for estimates) and its markers in one plot call per
    (colour, marker, fill); legend entries are stand-ins drawn as the per-configuration path draws them."""
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D
    import matplotlib

    width = matplotlib.rcParams["lines.linewidth"]
    legend: dict[str, Line2D] = {}
    for ax, (key, title, hint) in zip(axes, panels):
        drawn = False
        lines: dict[bool, tuple[list, list]] = {False: ([], []), True: ([], [])}  # estimate -> (segments, colours)
        marks: dict[tuple, tuple[list, list]] = {}  # (colour, marker, hollow) -> (xs, ys)
        bad_x: list[float] = []
        bad_y: list[float] = []
        for i, s in enumerate(series):
            color = PALETTE[i % len(PALETTE)]
            marker = MARKERS[devices.index(s.device) % len(MARKERS)]
            pts = sorted((p for p in s.points if p.value(key) is not None), key=lambda p: p.batch)
            ok = [p for p in pts if p.valid]
            if ok:
                est = any(p.estimate for p in ok) and key != "decode_tps"
                xy = [(p.batch, p.value(key)) for p in ok]
                segs, colors = lines[est]
                segs.append(xy)
                colors.append(color)
                xs, ys = marks.setdefault((color, marker, est), ([], []))
                xs.extend(x for x, _ in xy)
                ys.extend(y for _, y in xy)
                label = s.label + (" (estimate)" if est else "")
                if label not in legend:
                    legend[label] = Line2D([], [], marker=marker, color=color, markerfacecolor="white" if est else color,
                                           linestyle="--" if est else "-", label=label)
                drawn = True
            bad = [p for p in pts if not p.valid]
            bad_x += [p.batch for p in bad]
            bad_y += [p.value(key) for p in bad]
            if bad and len(bad) <= MAX_ANNOTATED:
                for p in bad:
                    ax.annotate("INVALID", (p.batch, p.value(key)), textcoords="offset points", xytext=(4, 4),
                                color=INVALID_COLOR, fontsize=7)
        for est, (segs, colors) in lines.items():
            if segs:
                ax.add_collection(LineCollection(segs, colors=colors, linewidths=width, linestyles="--" if est else "-"))
        for (color, marker, est), (xs, ys) in marks.items():
            ax.plot(xs, ys, marker=marker, color=color, markerfacecolor="white" if est else color, linestyle="")
        if bad_x:
            ax.plot(bad_x, bad_y, marker="x", color=INVALID_COLOR, markersize=9, mew=2, linestyle="")
            drawn = True
        _finish_batch_panel(ax, key, title, hint, drawn, series)
    return _batch_legend(fig, list(legend.values()), list(legend))


def _capped_legend(handles: list, labels: list[str]) -> tuple[list, list[str]]:
    """At most MAX_LEGEND entries, the last one saying how many configurations are not listed."""
    if len(handles) <= MAX_LEGEND:
        return handles, labels
    from matplotlib.lines import Line2D

    more = len(handles) - (MAX_LEGEND - 1)
    return (handles[:MAX_LEGEND - 1] + [Line2D([], [], linestyle="")],
            labels[:MAX_LEGEND - 1] + [f"... and {more} more configurations (tables list every cell)"])


def tradeoff_figure(points: list[CellPoint]) -> bytes:
    """Latency (TPOT) against throughput and against J/token, with the Pareto front per device."""
    fig = _figure(12, 4.6)
    axes = fig.subplots(1, 2)
    labels = list(dict.fromkeys(p.label for p in points))
    label_at = {lab: i for i, lab in enumerate(labels)}
    devices = list(dict.fromkeys(p.device for p in points))
    specs = [(axes[0], "decode_tps", True, "decode throughput (tokens/s)  ->  better"),
             (axes[1], "j_per_token", False, "better  <-  J per generated token")]
    for ax, xkey, x_hi, xlabel in specs:
        have = [p for p in points if p.value(xkey) is not None and p.tpot_ms is not None]
        if not have:
            _no_data(ax, "no energy measurement for these cells" if xkey == "j_per_token" else "no measurement")
            ax.set_xlabel(xlabel)
            continue
        label_each = len(have) <= MAX_ANNOTATED
        bad = [p for p in have if not p.valid]
        if bad:
            ax.plot([p.value(xkey) for p in bad], [p.tpot_ms for p in bad], marker="x", color=INVALID_COLOR,
                    markersize=9, mew=2, linestyle="")
        groups: dict[tuple, list[CellPoint]] = {}  # one plot call per colour, marker and fill
        for p in have:
            if p.valid:
                groups.setdefault((p.label, p.device, p.estimate and xkey == "j_per_token"), []).append(p)
        styled: dict[tuple, list[CellPoint]] = {}  # (colour, marker, hollow) -> points
        for (lab, dev, est), pts in groups.items():
            key = (PALETTE[label_at[lab] % len(PALETTE)], MARKERS[devices.index(dev) % len(MARKERS)], est)
            if len(groups) > MAX_SERIES_ARTISTS:  # one call per style, not per configuration (issue 21)
                styled.setdefault(key, []).extend(pts)
            else:
                styled[key + (lab, dev)] = pts
        for (color, marker, est, *_), pts in styled.items():
            ax.plot([p.value(xkey) for p in pts], [p.tpot_ms for p in pts], marker=marker, color=color, markersize=7,
                    linestyle="", markerfacecolor="white" if est else color)
        if label_each:
            for p in have:
                if not p.valid:
                    ax.annotate("INVALID", (p.value(xkey), p.tpot_ms), textcoords="offset points", xytext=(4, 4),
                                color=INVALID_COLOR, fontsize=7)
                    continue
                est = p.estimate and xkey == "j_per_token"
                ax.annotate(f"b{p.batch}" + (" est." if est else ""), (p.value(xkey), p.tpot_ms),
                            textcoords="offset points", xytext=(4, -9), fontsize=7, color="#444")
        for d_i, dev in enumerate(devices):
            ok = [p for p in have if p.valid and p.device == dev]
            if len(ok) < 1:
                continue
            idx = pareto_front([p.value(xkey) for p in ok], [p.tpot_ms for p in ok], x_higher_better=x_hi,
                               y_higher_better=False)
            front = [ok[i] for i in idx]
            ax.plot([p.value(xkey) for p in front], [p.tpot_ms for p in front], marker="o", markersize=13,
                    markerfacecolor="none", markeredgecolor="#333", linestyle="", alpha=0.7)
            ax.plot([p.value(xkey) for p in front], [p.tpot_ms for p in front], color="#333", alpha=0.6,
                    linestyle=[":", "-.", "--"][d_i % 3], drawstyle="steps-post" if x_hi else "steps-pre",
                    label=f"Pareto front: {dev}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("time per output token (ms)  (lower is better)")
        ax.grid(True, alpha=0.3)
        xs = [p.value(xkey) for p in have if p.value(xkey) > 0]
        if xs and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
    axes[0].set_title("latency against throughput", fontsize=10)
    axes[1].set_title("latency against energy per token", fontsize=10)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=PALETTE[i % len(PALETTE)], marker="o", linestyle="", label=lab)
               for i, lab in enumerate(labels)]
    if len(handles) > MAX_LEGEND:
        handles = handles[:MAX_LEGEND - 1] + [Line2D([], [], linestyle="", label=f"... and {len(handles) - MAX_LEGEND + 1} "
                                                                                  "more configurations")]
    handles += [Line2D([], [], color="#333", marker=MARKERS[i % len(MARKERS)], linestyle=[":", "-.", "--"][i % 3],
                       label=f"device {dev}") for i, dev in enumerate(devices)]
    handles.append(Line2D([], [], color="#333", marker="o", markersize=11, markerfacecolor="none", linestyle="-",
                          label="on the device's Pareto front"))
    if any(not p.valid for p in points):
        handles.append(Line2D([], [], color=INVALID_COLOR, marker="x", linestyle="", mew=2, label="INVALID (never on a front)"))
    if any(p.estimate for p in points):
        handles.append(Line2D([], [], color="#333", marker="o", markerfacecolor="white", linestyle="",
                              label="energy ESTIMATE (not measured)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(3, len(handles)), fontsize=8, frameon=False)
    return to_png(fig)


def timeline_figure(rows: list[PowerSample], title: str, windows: dict | None = None) -> bytes:
    """Power against time of one cell, one line per meter, phases shaded.

    rows: power samples (times in seconds, absolute or relative).
    windows: {phase: {"t_start", "t_end"}} on the same clock (the record's energy windows);
    without them the phases are taken from the samples' labels.
    """
    fig = _figure(12, 3.6)
    ax = fig.subplots(1, 1)
    rows = [r for r in rows if r.watts is not None]
    if not rows:
        _no_data(ax, "no power samples recorded for this cell")
        ax.set_title(title, fontsize=10)
        return to_png(fig)
    wins = [(p, w["t_start"], w["t_end"]) for p, w in (windows or {}).items()
            if isinstance(w, dict) and w.get("t_start") is not None and w.get("t_end") is not None]
    t0 = min([r.t for r in rows] + [a for _, a, _ in wins])
    spans: list[list] = [[p, a - t0, b - t0] for p, a, b in sorted(wins, key=lambda w: w[1])]
    if not spans:  # phase spans from the samples' labels
        for r in sorted(rows, key=lambda r: r.t):
            t = r.t - t0
            if spans and spans[-1][0] == r.phase:
                spans[-1][2] = t
            else:
                spans.append([r.phase, t, t])
    seen_phase = set()
    for phase, a, b in spans:
        ax.axvspan(a, b if b > a else a + 1e-3, color=PHASE_COLORS.get(phase, "#f4f4f4"), alpha=0.8, lw=0,
                   label=phase if phase not in seen_phase else None)
        seen_phase.add(phase)
    for i, meter in enumerate(dict.fromkeys(r.meter for r in rows)):
        pts = sorted((r for r in rows if r.meter == meter), key=lambda r: r.t)
        ax.plot([r.t - t0 for r in pts], [r.watts for r in pts], color=PALETTE[i % len(PALETTE)],
                marker="." if len(pts) < 200 else None, lw=1.3, label=f"{meter} (W)")
    ax.set_xlabel("time since the start of the first energy window (s)")
    ax.set_ylabel("power (W)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=10)
    fig.legend(loc="outside right upper", fontsize=8, frameon=False)
    return to_png(fig)
