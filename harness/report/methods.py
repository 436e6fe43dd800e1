"""The report's closing section: how every figure is defined and computed."""
from __future__ import annotations

from typing import Optional

from harness import stats
from harness.report.document import Document
from harness.report.prices import Prices


def methods_section(doc: Document, prices: Optional[Prices]) -> None:
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
        "SUSPECT, judged per side: a claim on a decode metric (tokens/s, TPOT, J/token, tokens/J) looks at the decode "
        "roofline, one on TTFT, prefill or J/prompt token at the prefill roofline; a compared cell above 100 % of "
        "the roofline that matters makes the claim INCONCLUSIVE, never SUPPORTED or REFUTED.",
        "**INVALID**: the backend's logits disagreed with the fp32 reference beyond the dtype's tolerance; such a cell "
        "is shown but never ranked best, never on a Pareto front, and cannot support a claim.",
    ])
    cost = ("**Cost per million generated tokens** = hardware + energy, where T = batch x gen_len / median request "
            "time (generated tokens/s while busy), u = utilisation; hardware = price / (lifetime_years x 31,557,600 s "
            "x u x T) x 10^6; energy = (10^6 / tokens_per_J + idle_W x (10^6 / T) x (1 - u) / u) x PUE / 3.6x10^6 kWh "
            "x electricity price. The energy term counts only what the meter's scope covers (a board meter misses "
            "the host).")
    if prices:
        hw = "; ".join(f"{h.name or h.match.given()}: {prices.currency} {h.price:,.0f} over {h.lifetime_years:g} years"
                       + (f", utilisation {h.utilisation:g}" if h.utilisation is not None else "")
                       for h in prices.hardware)
        cost += (f" Prices from `{prices.source}`: electricity {prices.currency} {prices.electricity_per_kwh:g}/kWh, "
                 f"utilisation {prices.utilisation:g}, PUE {prices.pue:g}; hardware: {hw or 'none given'}.")
    else:
        cost += " No prices file given (`--prices FILE`, see workloads/prices.example.yaml): no cost column."
    doc.ul([cost])
