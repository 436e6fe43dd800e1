"""Kills mutants of the verdict rules in harness/verdicts.py (issue 19): the factor at the
interval's edges, which side is better, what blocks a ratio, the physical-bound factor and
the CI gate. Expected values by hand."""
import pytest

from harness import verdicts as V
from harness.bounds import Bound, PhaseBound, PhaseWork, Term
from harness.cells import load_cells
from harness.stats import Ratio
from tests.test_claims import claim, record, write_run


def ratio(lo, hi):
    return Ratio(ratio=None if lo is None else (lo + (hi or lo)) / 2, ci_low=lo, ci_high=hi, n_a=5, n_b=5,
                 confidence=0.95, method="independent", statistic="median")


@pytest.mark.parametrize("lo,hi,verdict", [
    (2.0, 2.0, V.SUPPORTED),          # constant samples: the interval [2, 2] meets the factor
    (2.0, 3.0, V.SUPPORTED),
    (2.0001, 3.0, V.SUPPORTED),
    (1.9999, 3.0, V.INCONCLUSIVE),
    (1.5, 2.0, V.INCONCLUSIVE),       # the upper edge at the factor does not refute it
    (1.5, 1.9999, V.REFUTED),
    (None, 3.0, V.INCONCLUSIVE),
    (2.5, None, V.INCONCLUSIVE),
])
def test_verdict_at_the_factor(lo, hi, verdict):
    assert V._verdict_of(ratio(lo, hi), 2.0) == verdict


def test_better_follows_the_metrics_direction():
    assert V._better("decode_tps", 2.0, 1.0) is True
    assert V._better("decode_tps", 1.0, 1.0) is False
    assert V._better("decode_tps", 1.0, 2.0) is False
    assert V._better("ttft_s", 1.0, 2.0) is True
    assert V._better("ttft_s", 1.0, 1.0) is False
    assert V._better("ttft_s", 2.0, 1.0) is False


def test_roofline_at_text():
    assert V._roofline_at({"decode_pct": 123.6}, "decode") == "at 124 %"
    assert V._roofline_at({"decode_pct": 123.6}, "prefill") == "above 100 %"


def cell(tmp_path, name, **kw):
    (c,) = load_cells([write_run(tmp_path, name, [record(**kw)])])
    return c


def test_blocker_names_each_side_and_its_roofline(tmp_path):
    ok = cell(tmp_path, "a", backend="gpu", decode_pct=80.0)
    fast_decode = cell(tmp_path, "b", decode_pct=150.0)
    assert V._blocker("decode_tps", ok, ok) is None
    assert V._blocker("decode_tps", fast_decode, ok) == ("subject at 150 % of its decode roofline: faster than "
                                                         "the hardware allows; check the measurement")
    assert V._blocker("decode_tps", ok, fast_decode).startswith("baseline at 150 % of its decode roofline")
    # prefill metrics are bounded by the prefill side only
    assert V._blocker("ttft_s", fast_decode, ok) is None
    fast_prefill = cell(tmp_path, "c", roofline={"decode_pct": 50.0, "prefill_pct": 300.0, "suspect": True})
    assert V._blocker("ttft_s", fast_prefill, ok) == ("subject at 300 % of its prefill roofline: faster than the "
                                                      "hardware allows; check the measurement")
    assert V._blocker("decode_tps", fast_prefill, ok) is None
    # request latency covers both sides
    assert V._blocker("e2e_s", fast_prefill, ok).startswith("subject at 300 % of its prefill roofline")
    assert V._blocker("e2e_s", fast_decode, fast_prefill) == (
        "subject at 150 % of its decode roofline: faster than the hardware allows; check the measurement; "
        "baseline at 300 % of its prefill roofline: faster than the hardware allows; check the measurement")


def test_blocker_names_invalid_and_failed_cells(tmp_path):
    ok = cell(tmp_path, "a", backend="gpu")
    bad = cell(tmp_path, "b", accuracy=False, status="invalid")
    why = V._blocker("decode_tps", bad, ok)
    assert why == (f"subject cell {bad.short} is INVALID (failed the accuracy gate): its figures can neither "
                   "support nor refute a claim")
    # an invalid cell is not also judged on its roofline
    bad_fast = cell(tmp_path, "c", accuracy=False, status="invalid", decode_pct=400.0)
    assert "roofline" not in V._blocker("decode_tps", ok, bad_fast)


def test_plain_median():
    assert V.plain_median([]) is None
    assert V.plain_median([3.0, 1.0, 2.0]) == 2.0
    assert V.plain_median([4.0, 1.0, 2.0, 3.0]) == 2.5


def test_as_joules():
    assert V._as_joules("j_per_token", 0.5) == 0.5
    assert V._as_joules("j_per_1k_tokens", 500.0) == 0.5
    assert V._as_joules("tokens_per_joule", 4.0) == 0.25


def _bound(tps, terms):
    work = PhaseWork(weight_bytes=1.0, kv_bytes=0.0, macs=1.0)
    phase = PhaseBound(work=work, tps=tps, limit="memory", terms=tuple(terms))
    return Bound(device=None, workload=None, decode=phase, prefill=phase, fits=None, footprint_bytes=0.0)


def test_floor_and_allowed_factor():
    b = _bound(1000.0, [Term("memory", 0.02, ""), Term("mac", 0.01, ""), Term("idle", 0.05, ""),
                        Term("x", None, "")])
    assert V._floor(b, "gross") == pytest.approx(0.08)
    assert V._floor(b, "net") == pytest.approx(0.03)
    assert V._allowed("decode_tps", "gross", b, 250.0) == pytest.approx(4.0)
    assert V._allowed("decode_tps", "gross", _bound(None, []), 250.0) is None
    # a baseline at 0.4 J/token against a gross floor of 0.08: at most 5x better
    assert V._allowed("j_per_token", "gross", b, 0.4) == pytest.approx(5.0)
    assert V._allowed("j_per_token", "net", b, 0.3) == pytest.approx(10.0)
    assert V._allowed("tokens_per_joule", "gross", b, 2.5) == pytest.approx(5.0)
    assert V._allowed("j_per_token", "gross", _bound(1.0, [Term("memory", None, "")]), 0.4) is None
    assert V._allowed("j_per_token", "net", _bound(1.0, [Term("idle", 0.1, "")]), 0.4) is None


def _verdict(verdict, required=True, no_data=False):
    return V.Verdict(claim=claim(required=required), verdict=verdict, no_data=no_data)


@pytest.mark.parametrize("verdict,required,no_data,fails,fails_strict", [
    (V.SUPPORTED, True, False, False, False),
    (V.INCONCLUSIVE, True, False, False, True),
    (V.REFUTED, True, False, True, True),
    (V.IMPLAUSIBLE, True, False, True, True),
    (V.INCONCLUSIVE, True, True, True, True),
    (V.REFUTED, False, False, False, False),
    (V.INCONCLUSIVE, False, True, False, False),
])
def test_gate(verdict, required, no_data, fails, fails_strict):
    v = _verdict(verdict, required, no_data)
    assert v.failed_required is fails
    assert V.gate_failures([v]) == ([v] if fails else [])
    assert V.gate_failures([v], strict=True) == ([v] if fails_strict else [])
    assert V.exit_code([v]) == int(fails)
    assert V.exit_code([v], strict=True) == int(fails_strict)


def test_exit_code_of_several():
    ok, bad = _verdict(V.SUPPORTED), _verdict(V.REFUTED)
    assert V.exit_code([ok, bad, ok]) == 1
    assert V.gate_failures([bad, ok, bad]) == [bad, bad]
    assert V.exit_code([]) == 0


def test_blocker_holds_decode_metrics_to_the_catalog_bound(tmp_path):
    from tests.test_implausible import W, rngd_bound

    fast = record(backend="npu", device="npu:0", decode=1.3 * rngd_bound(), model="llama-3.1-8b",
                  precision="bf16", decode_pct=None)
    slow = record(backend="gpu", device="cuda:0", decode=40.0, model="llama-3.1-8b", precision="bf16",
                  decode_pct=80.0, seed=1)
    invalid = dict(record(backend="npx", device="npu:1", decode=1.3 * rngd_bound(), model="llama-3.1-8b",
                          precision="bf16", decode_pct=None, accuracy=False, status="invalid"))
    s, b, bad = load_cells([write_run(tmp_path, "r", [fast, slow, invalid])])
    c = claim(subject={"backend": "npu", "catalog": "rngd"}, baseline={"backend": "gpu", "catalog": "rngd"},
              workload=W, at_least=1.2)
    why = V._blocker("decode_tps", s, b, c)
    assert why.startswith("subject decodes ") and "above the physical bound of rngd" in why
    assert "baseline" not in why
    # the baseline held to the subject's device too: swapped, it is the baseline that is SUSPECT
    assert V._blocker("decode_tps", b, s, c).startswith("baseline decodes ")
    # prefill-side metrics are not bounded by the decode bound
    assert V._blocker("ttft_s", s, b, c) is None
    # an invalid cell is named for its accuracy, not for its bound
    assert "decodes" not in V._blocker("decode_tps", bad, b, c)
    assert V._blocker("decode_tps", s, b, None) is None


def _jmeter(name, scope, j):
    return {"meter": name, "method": "counter", "scope": scope, "quality": "ok", "tokens_per_joule_gross": 1 / j,
            "j_per_generated_token_gross": j, "j_per_prompt_token_gross": j / 10, "idle_w": 50.0, "warnings": []}


def test_blocker_reads_the_claims_energy_kind_and_scope(tmp_path):
    from tests.test_implausible import W

    # a board meter far below RNGD's ~0.8 J/token floor, a wall meter well above it
    meters = {"meters": [_jmeter("board", "gpu-board", 0.01), _jmeter("wall", "wall", 5.0)], "tokens": {}}
    s_rec = record(backend="npu", device="npu:0", decode=50.0, model="llama-3.1-8b", precision="bf16",
                   decode_pct=None, energy=meters)
    b_rec = record(backend="gpu", device="cuda:0", decode=40.0, model="llama-3.1-8b", precision="bf16",
                   decode_pct=80.0, tpj=0.2, seed=1)
    s, b = load_cells([write_run(tmp_path, "r", [s_rec, b_rec])])
    sel = dict(subject={"backend": "npu", "catalog": "rngd"}, workload=W, at_least=2.0, metric="j_per_token")
    gross = V._blocker("j_per_token", s, b, claim(scope="gpu-board", **sel))
    assert gross.startswith("subject spends ") and "below the floor of rngd" in gross
    # no scope: the one meter rule's (both ok: the widest, the wall), which is within physics
    assert V._blocker("j_per_token", s, b, claim(**sel)) is None
    assert V._blocker("j_per_token", s, b, claim(scope="wall", **sel)) is None
    # net figures: these meters have none, so there is nothing to hold to the floor
    assert V._blocker("j_per_token", s, b, claim(energy="net", scope="gpu-board", **sel)) is None


def test_blocker_names_a_failed_cell_and_both_sides(tmp_path):
    ok = cell(tmp_path, "a", backend="gpu")
    failed_rec = record(backend="npu")
    failed_rec.update(status="failed", valid=False)
    (failed,) = load_cells([write_run(tmp_path, "f", [failed_rec])])
    assert V._blocker("decode_tps", failed, ok) == (f"subject cell {failed.short} is FAILED: its figures can "
                                                    "neither support nor refute a claim")
    bad = cell(tmp_path, "b", accuracy=False, status="invalid")
    both = V._blocker("decode_tps", failed, bad)
    assert both.startswith(f"subject cell {failed.short} is FAILED")
    assert f"; baseline cell {bad.short} is INVALID (failed the accuracy gate)" in both
