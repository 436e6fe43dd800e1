"""Every rule a user relies on, pinned at its boundary from both sides (issue 19).

Each test below catches one wrong rule that the rest of the suite let through (the
issue's list; which test catches which is in docs/decisions.md, "Issue 19"). Expected
values are computed here from the README's definitions (and the prices file's formula),
never with the production helper under test; the helpers are only called to produce the
figure that is then checked.

Fast, pure tests first; then one real `harness run` (worker processes, the faulty backend
plugin pip-installed as in tests/test_plugin.py) for INVALID marking and the worker's
energy wiring; then the ONNX fallback guard and llama.cpp's q4_0 against the gate.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from harness.accuracy import compare
from harness.cells import load_cells
from harness.metrics import RepSample, Samples, cell_metrics
from harness.records import CellRecord
from harness.roofline import roofline, side_suspect
from harness.verdicts import INCONCLUSIVE, REFUTED, SUPPORTED, evaluate
from tests.test_claims import cells_of, claim, gpu, record, write_run
from tests.test_plugin import check_results, faulty, faulty_plugin, harness, plugin_env  # noqa: F401
from workloads.zoo import ZOO, ModelArgs, ModelSpec

# --- verdict thresholds: SUPPORTED iff ci_low >= factor, REFUTED iff ci_high < factor ------------

#: higher-is-better and lower-is-better metrics; for every one the subject is 2x better
METRICS_2X = ["decode_tps", "tokens_per_joule", "tpot_s", "j_per_token"]


def _two_x(tmp_path, spread: float):
    """Subject decodes 200 tok/s at 200 tokens/J, baseline 100 and 100: 2x better on every metric
    above; spread 0 gives constant samples, hence the bootstrap interval [2, 2]."""
    return cells_of(tmp_path, [record(decode=200.0, tpj=200.0, spread=spread, n=6)],
                    [gpu(decode=100.0, tpj=100.0, spread=spread, n=6)])


@pytest.mark.parametrize("metric", METRICS_2X)
def test_verdict_at_factor_equal_to_ci_low_is_supported(tmp_path, metric):
    """The `ci_low >= factor` rule at equality: an interval of exactly [2, 2] supports "at least 2x";
    one ulp above the factor refutes it, one ulp below supports it (catches `>=` -> `>`)."""
    cells = _two_x(tmp_path, spread=0.0)
    at = evaluate(claim(metric=metric, at_least=2.0), cells)
    r = at.comparison.ratio
    assert (r.ratio, r.ci_low, r.ci_high) == (2.0, 2.0, 2.0)  # 200/100 and 0.01/0.005, every resample
    assert at.verdict == SUPPORTED, at.reason
    above = evaluate(claim(metric=metric, at_least=math.nextafter(2.0, math.inf)), cells)
    assert above.verdict == REFUTED, above.reason
    below = evaluate(claim(metric=metric, at_least=math.nextafter(2.0, 0.0)), cells)
    assert below.verdict == SUPPORTED, below.reason


@pytest.mark.parametrize("metric", METRICS_2X)
def test_verdict_at_both_edges_of_a_real_interval(tmp_path, metric):
    """With noisy repetitions the interval [lo, hi] has lo < 2 < hi: a factor at lo is SUPPORTED,
    just above lo INCONCLUSIVE; a factor at hi is INCONCLUSIVE, just above hi REFUTED."""
    cells = _two_x(tmp_path, spread=0.05)
    r = evaluate(claim(metric=metric, at_least=2.0), cells).comparison.ratio
    lo, hi = r.ci_low, r.ci_high
    assert lo < 2.0 < hi
    cases = [(lo, SUPPORTED), (math.nextafter(lo, math.inf), INCONCLUSIVE), (2.0, INCONCLUSIVE),
             (hi, INCONCLUSIVE), (math.nextafter(hi, math.inf), REFUTED)]
    got = [(f, evaluate(claim(metric=metric, at_least=f), cells).verdict) for f, _ in cases]
    assert got == cases


# --- accuracy tolerance per precision (the README's figures, not harness.accuracy.TOLERANCE) ------

README_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 6e-2, "q8_0": 6e-2, "q4_0": 0.2, "int8": 6e-2}


@pytest.mark.parametrize("precision", sorted(README_TOLERANCE))
def test_accuracy_tolerance_just_inside_and_just_outside(precision):
    """rel_err = max|logits - reference| / max|reference|: an error 0.1 % under the precision's
    tolerance passes, 0.1 % over fails (catches a tolerance scaled by any factor, x100 included)."""
    tol = README_TOLERANCE[precision]
    ref = np.random.default_rng(3).normal(size=(2, 5, 64))
    scale = float(np.abs(ref).max())
    for factor, passes in ((0.999, True), (1.001, False), (0.5, True), (1.5, False)):
        logits = ref.copy()
        logits[1, 2, 7] += factor * tol * scale  # one logit off by factor x tol of the largest |logit|
        got = compare(logits, ref, precision)
        assert got["rel_err"] == pytest.approx(factor * tol, rel=1e-9)
        assert got["passed"] is passes, (precision, factor, got)
        assert got["tolerance"] == tol


# --- roofline SUSPECT: above 100 % (decode: plus the calibration's noise margin) -------------------

SMOL = ZOO["smollm2-135m"]
B, P, G = 2, 64, 64
BW, PEAK = 20e9, 1e12


def _decode_limit_by_hand() -> float:
    """README: decode tokens/s limit = B / ((weight bytes + KV bytes read per step) / read bandwidth);
    weights exclude the untied embedding table, KV read at the mean context P + G/2, fp32."""
    a = SMOL
    attn = a.dim * (a.dim + 2 * a.n_kv_heads * a.head_dim) + a.dim * a.dim
    params = (a.vocab_size * a.dim + (0 if a.tie_embeddings else a.vocab_size * a.dim)
              + a.n_layers * (attn + 3 * a.dim * a.ffn_dim + 2 * a.dim) + a.dim)
    weights = (params - (0 if a.tie_embeddings else a.vocab_size * a.dim)) * 4
    kv = B * (P + G / 2) * 2 * a.n_layers * a.n_kv_heads * a.head_dim * 4
    return B * BW / (weights + kv)


def _prefill_min_s_by_hand() -> float:
    """README: prefill time against flops / matmul rate; flops = B x P x 2 x (matmul weights +
    attention over the mean context P/2)."""
    a = SMOL
    per_layer = a.dim * (a.dim + 2 * a.n_kv_heads * a.head_dim) + a.dim * a.dim + 3 * a.dim * a.ffn_dim
    flops_per_token = 2 * (a.n_layers * per_layer + a.vocab_size * a.dim + 2 * a.n_layers * a.dim * (P // 2))
    return B * P * flops_per_token / PEAK


def _roof_record(decode_tps: float, ttft: float) -> CellRecord:
    return CellRecord(cell_id="c", backend="b", backend_type="torch", model="smollm2-135m", dtype="fp32", batch=B,
                      prompt_len=P, gen_len=G, scenario="offline", status="ok", valid=True, precision="fp32",
                      metrics={"decode_tps": {"median": decode_tps}, "ttft_s": {"median": ttft}})


def _cal(noise: float | None = None) -> dict:
    cal = {"device": "cpu", "host": "h", "read_bandwidth_Bps": BW, "matmul_flops": {"fp32": PEAK}}
    if noise is not None:
        cal["read_noise"] = noise
    return cal


SLOW_PREFILL = 1e3  # seconds: far under the prefill roofline
SLOW_DECODE = 1e-3  # tokens/s: far under the decode roofline


@pytest.mark.parametrize("pct, suspect", [(50.0, False), (100.0, False), (100.0001, True), (101.0, True),
                                          (150.0, True), (199.0, True), (250.0, True)])
def test_decode_suspect_at_and_around_100_percent(pct, suspect):
    limit = _decode_limit_by_hand()
    out = roofline(_roof_record(limit * pct / 100, SLOW_PREFILL), _cal())
    assert out["decode_limit_tps"] == pytest.approx(limit, rel=1e-12)
    if pct == 100.0:  # exactly at the limit as the record computes it: not above it
        out = roofline(_roof_record(out["decode_limit_tps"], SLOW_PREFILL), _cal())
        assert out["decode_pct"] == 100.0
    assert out["decode_pct"] == pytest.approx(pct, rel=1e-9)
    assert (out["decode_suspect"], out["prefill_suspect"], out["suspect"]) == (suspect, False, suspect)
    assert side_suspect(out, "decode") is suspect


@pytest.mark.parametrize("pct, suspect", [(104.9, False), (105.0, False), (105.1, True), (110.0, True)])
def test_decode_suspect_allows_the_calibration_noise_margin(pct, suspect):
    """read_noise 0.05: the decode side is suspect only above 100 % + 5 %."""
    limit = _decode_limit_by_hand()
    out = roofline(_roof_record(limit * pct / 100, SLOW_PREFILL), _cal(noise=0.05))
    assert out["decode_margin_pct"] == pytest.approx(5.0)
    assert out["decode_suspect"] is suspect and out["suspect"] is suspect


@pytest.mark.parametrize("pct, suspect", [(50.0, False), (100.0, False), (100.0001, True), (101.0, True),
                                          (199.0, True), (250.0, True)])
def test_prefill_suspect_at_and_around_100_percent(pct, suspect):
    """prefill % = 100 x t_min / TTFT; the prefill side has no noise margin and is part of the rule
    (catches the threshold moved to 200 % and the prefill side dropped from it)."""
    t_min = _prefill_min_s_by_hand()
    ttft = t_min if pct == 100.0 else t_min * 100 / pct
    out = roofline(_roof_record(SLOW_DECODE, ttft), _cal(noise=0.05))
    assert out["prefill_pct"] == pytest.approx(pct, rel=1e-9)
    assert (out["prefill_suspect"], out["decode_suspect"], out["suspect"]) == (suspect, False, suspect)
    assert side_suspect(out, "prefill") is suspect


@pytest.mark.parametrize("metric, side", [("decode_tps", "decode"), ("ttft_s", "prefill")])
@pytest.mark.parametrize("pct, blocked", [(100.0, False), (101.0, True)])
def test_a_suspect_side_blocks_the_verdict_on_its_metric(tmp_path, metric, side, pct, blocked):
    """A subject 10x better on every metric, its roofline for the claim's side at 100 % (judged) or
    101 % (INCONCLUSIVE, never SUPPORTED), its record's flags written by harness.roofline."""
    flag = roofline(_roof_record(_decode_limit_by_hand() * pct / 100, SLOW_PREFILL), _cal()) if side == "decode" \
        else roofline(_roof_record(SLOW_DECODE, _prefill_min_s_by_hand() * 100 / pct), _cal())
    roof = {k: flag[k] for k in (f"{side}_pct", f"{side}_suspect", "suspect")}
    sub = record(decode=1000.0, spread=0.01, roofline=roof)  # 10x the baseline's decode, and its prefill:
    sub["metrics"]["ttft_s"] = {k: (v / 10 if k in ("mean", "median", "min", "max") else
                                    [x / 10 for x in v] if k == "samples" else v)
                                for k, v in sub["metrics"]["ttft_s"].items()}
    cells = cells_of(tmp_path, [sub], [gpu(decode=100.0, spread=0.01)])
    v = evaluate(claim(metric=metric, at_least=2.0), cells)
    if blocked:
        assert v.verdict == INCONCLUSIVE and f"of its {side} roofline" in v.reason
    else:
        assert v.verdict == SUPPORTED, v.reason


# --- the README's metric formulas, computed here from their definitions ---------------------------

def _percentile(xs: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (the usual definition), written out."""
    s = sorted(xs)
    k = (len(s) - 1) * q / 100
    lo = int(math.floor(k))
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def test_batch_cell_metrics_follow_the_readme_definitions():
    """B=3, P=16, G=5 (4 decode steps): TPOT = (e2e - TTFT) / (G - 1), decode tok/s = B x (G - 1) /
    (e2e - TTFT), prefill tok/s = B x P / TTFT, ITL from the gaps between decode-step completions."""
    b, p, g = 3, 16, 5
    reps = [RepSample(0.10, 0.50, [0.10, 0.20, 0.35, 0.40]), RepSample(0.20, 0.80, [0.15, 0.30, 0.45, 0.60]),
            RepSample(0.10, 0.70, [0.05, 0.30, 0.40, 0.60])]
    m = cell_metrics(Samples(b, p, g, reps))
    tpot = [(0.50 - 0.10) / 4, (0.80 - 0.20) / 4, (0.70 - 0.10) / 4]  # 0.1, 0.15, 0.15 (G would give 0.08 ...)
    assert m["tpot_s"]["samples"] == pytest.approx(tpot)
    assert m["tpot_s"]["median"] == pytest.approx(0.15)
    assert m["decode_tps"]["samples"] == pytest.approx([3 * 4 / 0.4, 3 * 4 / 0.6, 3 * 4 / 0.6])
    assert m["prefill_tps"]["samples"] == pytest.approx([3 * 16 / 0.1, 3 * 16 / 0.2, 3 * 16 / 0.1])
    assert m["ttft_s"]["samples"] == pytest.approx([0.1, 0.2, 0.1])
    assert m["e2e_s"]["samples"] == pytest.approx([0.5, 0.8, 0.7])
    gaps = [0.10, 0.10, 0.15, 0.05, 0.15, 0.15, 0.15, 0.15, 0.05, 0.25, 0.10, 0.20]
    assert m["itl_s"]["n"] == 12
    for q in (50, 90, 99):
        assert m["itl_s"][f"p{q}"] == pytest.approx(_percentile(gaps, q)), q


def test_request_tpot_and_itl_follow_the_readme_definitions():
    """Per request: TPOT = (last token - first token) / (output tokens - 1); ITL pools the gaps
    between consecutive streamed tokens over requests."""
    from backends.base import RequestResult
    from harness.scenarios.request_metrics import request_metrics

    def req(i, first, times):
        return RequestResult(id=i, prompt_len=8, n_requested=len(times), t_issue=0.0, t_arrival=0.0,
                             t_first_token=first, t_end=times[-1], token_times=times, n_generated=len(times))

    a = req(0, 0.2, [0.2, 0.3, 0.5, 0.6, 1.0])  # 5 tokens: (1.0 - 0.2) / 4 = 0.2
    b = req(1, 0.1, [0.1, 0.2, 0.4])  # 3 tokens: (0.4 - 0.1) / 2 = 0.15
    c = req(2, 0.3, [0.3, 0.35, 0.45, 0.6])  # 4 tokens: 0.3 / 3 = 0.1
    m = request_metrics([a, b, c])
    assert sorted(m["tpot_s"]["samples"]) == pytest.approx([0.1, 0.15, 0.2])
    assert m["tpot_s"]["median"] == pytest.approx(0.15)
    gaps = [0.1, 0.2, 0.1, 0.4, 0.1, 0.2, 0.05, 0.1, 0.15]
    assert m["itl_s"]["n"] == len(gaps)
    for q in (50, 90, 99):
        assert m["itl_s"][f"p{q}"] == pytest.approx(_percentile(gaps, q)), q
    assert m["ttft_s"]["samples"] == pytest.approx([0.2, 0.1, 0.3])


def test_energy_figures_follow_the_readme_definitions():
    """A fake NVML board at 70 W idle and 300 W / 200 W while working (tests/test_energy.py's).
    From each window's gross joules, length and repeats, as recorded: net = gross - idle W x
    duration (idle W: the mean of the idle-before and idle-after windows' watts), J per prompt
    token = prefill J per repetition / prompt tokens, J per generated token = (generation J -
    prefill J, per repetition) / (B x (G - 1)), tokens per joule = B x G / generation J."""
    from harness.energy import EnergySettings, measure_cell_energy
    from tests.test_energy import IDLE_W, Workload, entry, nvml
    from tests.test_meters_nvml import FakeGpu

    b, p, g = 4, 32, 8
    board = FakeGpu(watts=IDLE_W, counter_period=0.001)
    meter = nvml(board)
    work = Workload(board, prefill_s=0.02, decode_s=0.03)
    try:
        res = measure_cell_energy([meter], work.prefill, work.generation, b * p, b * g,
                                  EnergySettings(idle_s=0.15, min_window_s=0.2, min_updates=10), sequences=b)
    finally:
        meter.stop()
    e = entry(res, "nvml:0")
    w = e.windows
    idle = (w["idle-before"]["gross_j"] / w["idle-before"]["duration_s"]
            + w["idle-after"]["gross_j"] / w["idle-after"]["duration_s"]) / 2
    assert idle == pytest.approx(IDLE_W, rel=0.05)  # the board's own idle power, seen by the counter
    for phase in ("prefill", "generation"):
        assert w[phase]["net_j"] == pytest.approx(w[phase]["gross_j"] - idle * w[phase]["duration_s"], rel=1e-9)
        assert w[phase]["net_j"] > 0.3 * w[phase]["gross_j"]  # work drew well above idle: net is not ~0
    pre = {k: w["prefill"][f"{k}_j"] / w["prefill"]["repeats"] for k in ("gross", "net")}
    gen = {k: w["generation"][f"{k}_j"] / w["generation"]["repeats"] for k in ("gross", "net")}
    assert e.j_per_prompt_token_gross == pytest.approx(pre["gross"] / (b * p), rel=1e-9)
    assert e.j_per_prompt_token_net == pytest.approx(pre["net"] / (b * p), rel=1e-9)
    assert e.j_per_generated_token_gross == pytest.approx((gen["gross"] - pre["gross"]) / (b * (g - 1)), rel=1e-9)
    assert e.j_per_generated_token_net == pytest.approx((gen["net"] - pre["net"]) / (b * (g - 1)), rel=1e-9)
    assert e.tokens_per_joule_gross == pytest.approx(b * g / gen["gross"], rel=1e-9)
    assert e.tokens_per_joule_net == pytest.approx(b * g / gen["net"], rel=1e-9)
    assert e.energy_per_request_gross_j == pytest.approx(gen["gross"] / b, rel=1e-9)


@pytest.mark.parametrize("utilisation", [0.25, 0.8])
def test_cost_per_million_tokens_follows_the_prices_formula(tmp_path, utilisation):
    """workloads/prices.example.yaml: T = B x G / median e2e; hardware = price / (lifetime x
    31,557,600 s x u x T) x 1e6; energy = (1e6 / tokens per J + idle W x 1e6 / T x (1 - u) / u) x
    PUE / 3.6e6 x price per kWh. u = 0.25 and 0.8 tell u from 1 - u and (1 - u) / u from u / (1 - u)
    (0.5 cannot); the hardware entry's own utilisation overrides the file's."""
    from harness.report.prices import cost_per_million, load_prices

    run = write_run(tmp_path, "r", [record(tpj=10.0, backend="acc", device="cpu", batch=4, gen_len=32)])
    (cell,) = load_cells([run])
    e2e = sorted(cell.record.metrics["e2e_s"]["samples"])
    median = (e2e[2] + e2e[3]) / 2  # six repetitions
    tps = 4 * 32 / median
    for file_u, hw_u in ((utilisation, None), (0.5, utilisation)):
        prices = tmp_path / f"p-{file_u}-{hw_u}.yaml"
        prices.write_text(yaml.safe_dump({
            "currency": "EUR", "electricity_per_kwh": 0.3, "utilisation": file_u, "pue": 1.5,
            "hardware": [{"match": {"backend": "acc"}, "price": 20000.0, "lifetime_years": 4,
                          **({} if hw_u is None else {"utilisation": hw_u})}]}))
        meter = cell.record.energy.meters[0]  # 10 tokens/J, idle 50 W (tests/test_claims.record)
        c = cost_per_million(cell, meter, load_prices(prices))
        u = utilisation
        hardware = 20000.0 / (4 * 365.25 * 24 * 3600 * u * tps) * 1e6
        energy = (1e6 / 10.0 + 50.0 * (1e6 / tps) * (1 - u) / u) * 1.5 / 3.6e6 * 0.3
        assert c.hardware == pytest.approx(hardware, rel=1e-9)
        assert c.energy == pytest.approx(energy, rel=1e-9)
        assert c.total == pytest.approx(hardware + energy, rel=1e-9)


# --- one real run: INVALID marked by the worker, energy figures through the worker -----------------

WATTS = 40.0  # the estimate meter's constant power
RUN_P, RUN_G = 8, 6


@pytest.fixture(scope="module")
def worker_run(faulty_plugin, tmp_path_factory):
    """`python -m harness run`: the faulty backend (the torch reference inside a pip-installed
    plugin) whose decode returns zeros at batch 3 only, and batch 2 honest, both measured by an
    estimate meter at a known constant power. One worker process serves both cells."""
    tmp = tmp_path_factory.mktemp("rules-run")
    suite = {
        "name": "rules", "warmup": 0, "repetitions": 2, "timeout_s": 600,
        "backends": [faulty("cheat", fault="wrong-tokens", fault_on_batch=3)],
        "workloads": [{"model": "tiny", "dtypes": ["fp32"], "batch_sizes": [2, 3], "prompt_lens": [RUN_P],
                       "gen_lens": [RUN_G]}],
        "meters": [{"type": "estimate", "watts": WATTS, "scope": "cpu-package", "source": "test"}],
        "energy": {"idle_s": 0.05, "min_window_s": 0.2, "min_updates": 1},
        "accuracy": {"seq_len": 8, "prefill_len": 4, "batch": 1}}
    (tmp / "suite.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    proc = harness("run", str(tmp / "suite.yaml"), "--output", str(tmp / "out"), "--name", "r", "--quiet",
                   env=plugin_env(faulty_plugin), timeout=600)
    assert proc.returncode == 0, proc.stderr
    return tmp / "out" / "r", check_results(tmp / "out" / "r")


def _cell(batch: int) -> str:
    return f"cheat/tiny/fp32/b{batch}/p{RUN_P}/g{RUN_G}/offline"


def test_worker_marks_a_cell_invalid_in_a_real_run(worker_run):
    """The worker's own marking (measure_cell), not a hand-edited record: the batch-3 cell's timed
    tokens fail the gate, so it is INVALID; the batch-2 cell of the same worker is ok; reports
    and claims read it as invalid."""
    run_dir, records = worker_run
    bad, good = records[_cell(3)], records[_cell(2)]
    assert (bad.status, bad.valid) == ("invalid", False) and bad.invalid
    assert bad.accuracy["passed"] is False and bad.accuracy["timed_output"]["passed"] is False
    assert bad.accuracy["logits_passed"] is True  # logits() alone would have let it through
    assert (good.status, good.valid) == ("ok", True) and good.accuracy["passed"] is True
    cells = {c.record.cell_id: c for c in load_cells([run_dir])}
    assert not cells[_cell(3)].ok and cells[_cell(3)].status_label == "INVALID"
    assert cells[_cell(2)].ok


def test_worker_energy_figures_count_every_sequence_of_the_batch(worker_run):
    """Batch 2, P=8, G=6, estimate at 40 W: each window's joules = 40 W x its length; the figures
    count B x P prompt tokens, B x (G - 1) decode tokens, B x G generated tokens and B requests
    (catches the offline scenario handing the energy engine a wrong sequence count)."""
    _, records = worker_run
    r = records[_cell(2)]
    b = 2
    (m,) = r.energy.meters
    assert m.method == "estimate"
    w = m.windows
    pre = WATTS * w["prefill"]["duration_s"] / w["prefill"]["repeats"]
    gen = WATTS * w["generation"]["duration_s"] / w["generation"]["repeats"]
    for phase in ("prefill", "generation"):
        assert w[phase]["gross_j"] == pytest.approx(WATTS * w[phase]["duration_s"], rel=1e-9)
        assert w[phase]["duration_s"] >= 0.2
    assert r.energy.tokens == {"prompt_tokens": b * RUN_P, "generated_tokens": b * RUN_G,
                               "decode_tokens": b * (RUN_G - 1), "sequences": b}
    assert m.j_per_prompt_token_gross == pytest.approx(pre / (b * RUN_P), rel=1e-9)
    assert m.j_per_generated_token_gross == pytest.approx((gen - pre) / (b * (RUN_G - 1)), rel=1e-9)
    assert m.j_per_generated_token_e2e_gross == pytest.approx(gen / (b * RUN_G), rel=1e-9)
    assert m.tokens_per_joule_gross == pytest.approx(b * RUN_G / gen, rel=1e-9)
    assert m.energy_per_request_gross_j == pytest.approx(gen / b, rel=1e-9)


# --- the ONNX fallback guard at partial fallback ------------------------------------------------------

AZ, CPU = "AzureExecutionProvider", "CPUExecutionProvider"
# tests/test_onnx_backend.py's small shape (same export cache key): a fast export
MICRO = ModelSpec(ModelArgs("micro", vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                            tie_embeddings=False, max_seq_len=256))


@pytest.fixture(scope="module")
def azure_nodes(tmp_path_factory):
    """(provider, op_type) of every node of a real session of the micro model with
    AzureExecutionProvider requested (it ships in the plain wheel and takes no node: ORT gives
    everything to the CPU), as the backend recorded them (ops per provider)."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from backends.onnx_backend import OnnxBackend, OnnxOptions

    if "AzureExecutionProvider" not in ort.get_available_providers():
        pytest.fail("this onnxruntime wheel has no AzureExecutionProvider: the fallback guard is untested")
    cache = tmp_path_factory.getbasetemp() / "onnx-cache"  # shared with tests/test_onnx_backend.py
    b = OnnxBackend(OnnxOptions(cache_dir=str(cache), intra_op_threads=2, allow_cpu_fallback=True,
                                providers=["AzureExecutionProvider", "CPUExecutionProvider"]))
    info = b.load(MICRO, "fp32", 1, 16)
    b.close()
    nodes = [(prov, op) for prov, ops in info.details["placement"]["ops_per_provider"].items()
             for op, n in ops.items() for _ in range(n)]
    return nodes, info.details["placement"], cache


def test_fallback_guard_real_sessions_at_0_and_100_percent(azure_nodes):
    """The real sessions: every compute node left on the CPU (100 %) refuses the cell with the
    guard's message; the CPU provider itself (0 % off the requested provider) is never refused."""
    from backends.base import BackendError
    from backends.onnx_backend import OnnxBackend, OnnxOptions, fallback_refusal

    nodes, placement, cache = azure_nodes
    assert placement["compute_share_off_requested"] == 1.0 and placement["compute_nodes"] > 4
    assert fallback_refusal(placement, allow_cpu_fallback=True) is None
    with pytest.raises(BackendError) as e:
        OnnxBackend(OnnxOptions(cache_dir=str(cache), intra_op_threads=2, providers=[AZ, CPU])).load(
            MICRO, "fp32", 1, 16)
    assert str(e.value) == fallback_refusal(placement, allow_cpu_fallback=False)
    cpu = OnnxBackend(OnnxOptions(cache_dir=str(cache), intra_op_threads=2))
    p = cpu.load(MICRO, "fp32", 1, 16).details["placement"]
    cpu.close()
    assert p["compute_share_off_requested"] == 0.0 and fallback_refusal(p, allow_cpu_fallback=False) is None


@pytest.mark.parametrize("left_on_cpu", ["one", "under half", "half", "over half", "all but one"])
def test_fallback_guard_refuses_any_partial_fallback(azure_nodes, left_on_cpu):
    """The real graph's nodes, the requested provider given all compute but k nodes (as a provider
    that takes part of a graph does): one compute node left on the CPU refuses the cell as surely
    as all of them (catches a guard that refuses only above some share, e.g. more than half)."""
    from backends.onnx_backend import COMPUTE_OPS, fallback_refusal, summarize_placement

    nodes, _, _ = azure_nodes
    compute = [i for i, (_, op) in enumerate(nodes) if op in COMPUTE_OPS]
    n = len(compute)
    k = {"one": 1, "under half": n // 2 - 1, "half": n // 2, "over half": n // 2 + 1, "all but one": n - 1}[left_on_cpu]
    stay = set(compute[:k])  # these stay on the CPU; every other node goes to the provider
    split = [(CPU if i in stay or op not in COMPUTE_OPS else AZ, op) for i, (_, op) in enumerate(nodes)]
    p = summarize_placement(split, AZ, "ep_graph_assignment")
    assert p["compute_nodes_off_requested"] == k and p["compute_share_off_requested"] == pytest.approx(k / n)
    why = fallback_refusal(p, allow_cpu_fallback=False)
    assert why is not None and f"{AZ} left compute on the CPU ({k} of {n} compute nodes" in why
    assert fallback_refusal(p, allow_cpu_fallback=True) is None
    # every compute node on the provider, only non-compute ops (shape bookkeeping, norms) on the CPU: timed
    shape_only = [(CPU if op not in COMPUTE_OPS else AZ, op) for _, op in nodes]
    assert fallback_refusal(summarize_placement(shape_only, AZ, "x"), allow_cpu_fallback=False) is None


# --- llama.cpp q4_0 against the gate ----------------------------------------------------------------

def test_q4_0_fails_the_accuracy_gate_in_a_real_run(tmp_path):
    """q4_0 of the random-weight reference model is too coarse for its 0.2 tolerance (the rel.
    error is about 0.4 on tiny): a real run marks the cell INVALID on its logits, and the q8_0
    cell of the same model passes. Skips only where llama-cpp-python is not installed."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gguf")
    llama = {"type": "llama.cpp", "options": {"threads": 2, "cache_dir": str(tmp_path / "gguf")}}
    suite = {
        "name": "q4", "warmup": 0, "repetitions": 1, "timeout_s": 600,
        "backends": [dict(llama, name="q4", options=dict(llama["options"], precision="q4_0")),
                     dict(llama, name="q8", options=dict(llama["options"], precision="q8_0"))],
        "workloads": [{"model": "tiny", "dtypes": ["fp32"], "batch_sizes": [1], "prompt_lens": [8], "gen_lens": [4]}],
        "energy": {"enabled": False}, "accuracy": {"seq_len": 16, "prefill_len": 8, "batch": 2}}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    proc = harness("run", str(tmp_path / "suite.yaml"), "--output", str(tmp_path / "out"), "--name", "r", "--quiet",
                   timeout=600)
    assert proc.returncode == 0, proc.stderr
    records = check_results(tmp_path / "out" / "r")
    (q4,), (q8,) = ([r for r in records.values() if r.backend == name] for name in ("q4", "q8"))
    assert q4.precision == "q4_0" and q4.accuracy["tolerance"] == README_TOLERANCE["q4_0"]
    assert q4.accuracy["rel_err"] > README_TOLERANCE["q4_0"] and q4.accuracy["logits_passed"] is False
    assert (q4.status, q4.valid, q4.accuracy["passed"]) == ("invalid", False, False)
    assert q8.precision == "q8_0" and q8.accuracy["passed"] is True and q8.status == "ok"
