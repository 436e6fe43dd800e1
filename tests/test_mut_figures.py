"""Kills mutants of harness/figures.py (issue 19): which meter a figure comes from, energy
per-repetition spread by hand (J_i = J x t_i / median t), and the direction of "better"."""
import pytest

from harness.figures import improvement, is_estimate, meter_figure, metric_value, primary_meter, MetricValue
from harness.records import MeterEnergy, record_from_json
from tests.test_claims import record as claims_record


def meter(name="a", method="counter", quality="ok", scope="gpu-board", tpj=10.0, avg_w=200.0, **kw):
    d = {"meter": name, "method": method, "quality": quality, "scope": scope, "tokens_per_joule_gross": tpj,
         "tokens_per_joule_net": None if tpj is None else 2 * tpj, "avg_w": avg_w}
    d.update(kw)
    return d


def rec(meters=None, e2e=(1.0, 2.0, 4.0), ttft=(0.5, 0.5, 1.0), decode=(10.0, 20.0, 40.0), status="ok"):
    r = claims_record()
    r["status"], r["valid"] = status, status == "ok"
    r["metrics"]["e2e_s"]["samples"] = list(e2e)
    r["metrics"]["ttft_s"]["samples"] = list(ttft)
    r["metrics"]["decode_tps"] = {"samples": list(decode)} if decode else {}
    r["energy"] = {"meters": meters if meters is not None else [meter()], "tokens": {}}
    return record_from_json(r)


def test_meter_figure_names():
    m = MeterEnergy(meter="m", tokens_per_joule_gross=4.0, tokens_per_joule_net=5.0, j_per_generated_token_gross=0.3,
                    j_per_prompt_token_net=0.01, avg_w=150.0)
    assert meter_figure(m, "tokens_per_joule") == 4.0
    assert meter_figure(m, "tokens_per_joule", "net") == 5.0
    assert meter_figure(m, "j_per_token") == 0.3
    assert meter_figure(m, "j_per_prompt_token", "net") == 0.01
    assert meter_figure(m, "j_per_1k_tokens") == pytest.approx(250.0)
    assert meter_figure(m, "j_per_1k_tokens", "net") == pytest.approx(200.0)
    assert meter_figure(MeterEnergy(meter="m"), "j_per_1k_tokens") is None
    assert meter_figure(m, "tokens_per_s_per_watt") == 150.0
    with pytest.raises(KeyError) as e:
        meter_figure(m, "decode_tps")
    assert e.value.args == ("decode_tps",)


def test_is_estimate():
    assert is_estimate(None) is False
    assert is_estimate(MeterEnergy(meter="m", method="estimate")) is True
    assert is_estimate(MeterEnergy(meter="m", method="counter", quality="ok")) is False


def test_primary_meter_prefers_measurement_then_full_window_then_order():
    r = rec([meter("est", method="estimate", quality="ok"), meter("short", quality="short-window"),
             meter("ok1", quality="ok"), meter("ok2", quality="ok")])
    assert primary_meter(r).meter == "ok1"
    r = rec([meter("est", method="estimate"), meter("short", quality="short-window")])
    assert primary_meter(r).meter == "short"
    # an unknown quality ranks after an estimate
    r = rec([meter("odd", quality="clock-skew"), meter("est", method="estimate")])
    assert primary_meter(r).meter == "est"
    r = rec([meter("odd1", quality="clock-skew"), meter("odd2", quality="unrated")])
    assert primary_meter(r).meter == "odd1"


def test_primary_meter_skips_missing_and_non_finite_and_other_scopes():
    r = rec([meter("none", tpj=None), meter("inf", tpj=float("inf")), meter("nan", tpj=float("nan")),
             meter("pkg", scope="cpu-package", tpj=3.0), meter("board", tpj=4.0, quality="short-window")])
    assert primary_meter(r).meter == "pkg"
    assert primary_meter(r, scope="gpu-board").meter == "board"
    assert primary_meter(r, scope="wall") is None
    assert primary_meter(rec([meter("none", tpj=None)])) is None


def test_timing_metric_is_the_records_samples():
    v = metric_value(rec(), "ttft")  # an alias
    assert v.metric == "ttft_s" and v.samples == [0.5, 0.5, 1.0] and v.reason is None and v.n == 3
    with pytest.raises(KeyError):
        metric_value(rec(), "speed")


def test_failed_cell_has_no_value():
    v = metric_value(rec(status="failed"), "decode_tps")
    assert v.samples == [] and v.reason == "cell failed"


def test_tokens_per_joule_spread_from_request_times():
    # e2e 1, 2, 4 s: median 2; tokens/J falls as time grows: J_i = 10 x 2 / t_i
    v = metric_value(rec(), "tokens_per_joule")
    assert v.samples == pytest.approx([20.0, 10.0, 5.0])
    assert v.meter.meter == "a"
    assert metric_value(rec(), "tokens_per_joule", kind="net").samples == pytest.approx([40.0, 20.0, 10.0])


def test_j_per_token_spread_from_decode_times():
    # decode times e2e - ttft = 0.5, 1.5, 3.0 -> median 1.5; J per token grows with time
    v = metric_value(rec([meter(j_per_generated_token_gross=0.3)]), "j_per_token")
    assert v.samples == pytest.approx([0.3 * 0.5 / 1.5, 0.3, 0.3 * 3.0 / 1.5])


def test_j_per_prompt_token_spread_from_ttft_even_count():
    # ttft 0.5, 1.0, 2.0, 3.0: an even count, median (1.0 + 2.0) / 2 = 1.5
    r = rec([meter(j_per_prompt_token_gross=0.03)], e2e=(1.0, 2.0, 3.0, 4.0), ttft=(0.5, 1.0, 2.0, 3.0))
    v = metric_value(r, "j_per_prompt_token")
    assert v.samples == pytest.approx([0.01, 0.02, 0.04, 0.06])


def test_j_per_1k_tokens_uses_request_times():
    v = metric_value(rec(), "j_per_1k_tokens")  # 100 J per 1000 tokens; e2e median 2
    assert v.samples == pytest.approx([50.0, 100.0, 200.0])


def test_non_positive_times_dropped_and_one_time_gives_the_value_alone():
    r = rec(e2e=(0.0, -1.0, 2.0), ttft=(0.1, 0.1, 0.1))
    assert metric_value(r, "tokens_per_joule").samples == [10.0]
    r = rec(e2e=(3.0, 0.0, 1.0, 2.0), ttft=(0.1, 0.1, 0.1, 0.1))  # kept: 3, 1, 2 -> median 2
    assert metric_value(r, "tokens_per_joule").samples == pytest.approx([10 * 2 / 3, 20.0, 10.0])


def test_j_per_token_with_unequal_sample_counts_falls_back_to_request_time():
    r = rec([meter(j_per_generated_token_gross=0.3)], e2e=(1.0, 2.0, 4.0), ttft=(0.5, 0.5))
    assert metric_value(r, "j_per_token").samples == pytest.approx([0.15, 0.3, 0.6])


def test_tokens_per_s_per_watt_divides_decode_by_the_meters_power():
    v = metric_value(rec([meter(avg_w=200.0)]), "tokens_per_s_per_watt")
    assert v.samples == pytest.approx([0.05, 0.1, 0.2])
    none = metric_value(rec([meter(avg_w=0.0)]), "tokens_per_s_per_watt")
    assert none.samples == [] and none.reason == "no energy figure"
    none = metric_value(rec([meter(avg_w=200.0)], decode=()), "tokens_per_s_per_watt")
    assert none.samples == []


def test_no_meter_gives_the_reason():
    v = metric_value(rec([meter(tpj=None, reason="generation: 3 updates < 10")]), "tokens_per_joule")
    assert v.samples == [] and v.reason == "no energy figure (generation: 3 updates < 10)"


def test_improvement_direction_follows_the_metric():
    fast, slow = [4.0] * 5, [2.0] * 5
    assert improvement(MetricValue("decode_tps", fast), MetricValue("decode_tps", slow)).ratio == pytest.approx(2.0)
    # lower is better for latency: the subject with half the time is twice as good
    assert improvement(MetricValue("ttft_s", slow), MetricValue("ttft_s", fast)).ratio == pytest.approx(2.0)


def test_values_carry_their_metric_and_meter(tmp_path):
    from harness.cells import load_cells
    from tests.test_claims import write_run

    with pytest.raises(KeyError) as e:
        metric_value(rec(), "speed")
    assert e.value.args == ("speed",)
    assert metric_value(rec(status="failed"), "decode_tps").metric == "decode_tps"
    empty = metric_value(rec(decode=()), "decode_tps")
    assert empty.samples == [] and empty.reason == "no decode_tps samples" and empty.metric == "decode_tps"
    w = metric_value(rec([meter(avg_w=200.0)]), "tokens_per_s_per_watt")
    assert w.metric == "tokens_per_s_per_watt" and w.meter.meter == "a"
    w0 = metric_value(rec([meter(avg_w=0.0)]), "tokens_per_s_per_watt")
    assert w0.metric == "tokens_per_s_per_watt" and w0.meter.meter == "a"
    nometer = metric_value(rec([]), "tokens_per_s_per_watt")
    assert nometer.samples == [] and nometer.meter is None and nometer.reason == "no energy figure"
    none = metric_value(rec([meter(tpj=None)]), "tokens_per_joule")
    assert none.metric == "tokens_per_joule" and none.meter is None
    # a ResultCell is read through its record
    r = claims_record(tpj=10.0)
    (c,) = load_cells([write_run(tmp_path, "r", [r])])
    assert metric_value(c, "decode_tps").samples == pytest.approx(r["metrics"]["decode_tps"]["samples"])


def test_scope_picks_the_meter_for_every_energy_metric():
    r = rec([meter("pkg", scope="cpu-package", tpj=3.0, avg_w=100.0), meter("board", tpj=4.0, avg_w=200.0)])
    assert metric_value(r, "tokens_per_s_per_watt").meter.meter == "board"  # both ok: the wider scope
    board = metric_value(r, "tokens_per_s_per_watt", scope="gpu-board")
    assert board.meter.meter == "board" and board.samples == pytest.approx([0.05, 0.1, 0.2])
    tpj = metric_value(r, "tokens_per_joule", scope="gpu-board")
    assert tpj.meter.meter == "board" and tpj.samples == pytest.approx([8.0, 4.0, 2.0])
    pkg = metric_value(r, "tokens_per_s_per_watt", scope="cpu-package")
    assert pkg.meter.meter == "pkg" and pkg.samples == pytest.approx([0.1, 0.2, 0.4])
    tpj = metric_value(r, "tokens_per_joule", scope="cpu-package")  # 3 tok/J x median 2 s / (1, 2, 4) s
    assert tpj.meter.meter == "pkg" and tpj.samples == pytest.approx([6.0, 3.0, 1.5])


def test_energy_spread_keeps_metric_and_meter():
    tpj = metric_value(rec(), "tokens_per_joule")
    assert tpj.metric == "tokens_per_joule" and tpj.meter.meter == "a"
    jpt = metric_value(rec([meter(j_per_generated_token_gross=0.3)]), "j_per_token")
    assert jpt.metric == "j_per_token" and jpt.meter.meter == "a"
    one = metric_value(rec(e2e=(0.0, 2.0, -1.0)), "tokens_per_joule")
    assert one.samples == [10.0] and one.metric == "tokens_per_joule" and one.meter.meter == "a"


def test_two_times_already_give_a_spread():
    # e2e 1 and 3: median 2 -> tokens/J 10 x 2 / t
    v = metric_value(rec(e2e=(1.0, 3.0), ttft=(0.1, 0.1)), "tokens_per_joule")
    assert v.samples == pytest.approx([20.0, 20.0 / 3])


def test_odd_count_median_is_the_middle_value():
    # five times 1, 2, 4, 8, 16: median 4 (not the second value)
    v = metric_value(rec(e2e=(16.0, 1.0, 8.0, 2.0, 4.0), ttft=(0.1,) * 5), "tokens_per_joule")
    assert v.samples == pytest.approx([10 * 4 / 16, 40.0, 5.0, 20.0, 10.0])


def test_primary_meter_reads_the_asked_kind_and_survives_no_energy():
    r = rec([meter("gross-less", tpj=None, tokens_per_joule_net=5.0)])
    assert primary_meter(r) is None
    assert primary_meter(r, kind="net").meter == "gross-less"
    r.energy = None
    assert primary_meter(r) is None


def test_meters_equal_on_mark_quality_and_scope_go_by_configured_order_not_by_name():
    """The last key is the configured order: names sorting the other way must not decide."""
    r = rec([meter("zeta"), meter("alpha")])
    assert primary_meter(r).meter == "zeta"
    r = rec([meter("zeta", quality="clock-skew"), meter("alpha", quality="unrated")])
    assert primary_meter(r).meter == "zeta"


def test_an_unknown_or_missing_scope_ranks_below_every_known_one():
    """Scope width: wall 4 ... dram 1; an unknown scope string and no scope at all are 0, so
    even the narrowest known scope (dram) wins over them, whatever the order."""
    assert primary_meter(rec([meter("rack", scope="rack"), meter("dram", scope="dram")])).meter == "dram"
    assert primary_meter(rec([meter("none", scope=None), meter("dram", scope="dram")])).meter == "dram"
    # unknown and missing tie: the configured order decides
    assert primary_meter(rec([meter("none", scope=None), meter("rack", scope="rack")])).meter == "none"
    assert primary_meter(rec([meter("rack", scope="rack"), meter("none", scope=None)])).meter == "rack"


def test_an_unknown_quality_ties_with_every_other_unrated_one():
    """Any quality the rule does not rank (clock-skew, a future one) ranks 3, after an
    estimate; two such tie and go on to scope."""
    r = rec([meter("odd", quality="from-the-future", scope="dram"), meter("skew", quality="clock-skew", scope="wall")])
    assert primary_meter(r).meter == "skew"


def test_tokens_per_s_per_watt_honours_the_primary_mark():
    r = rec([meter("wall", scope="wall", avg_w=400.0), meter("board", scope="gpu-board", avg_w=100.0)])
    assert metric_value(r, "tokens_per_s_per_watt").samples == [10 / 400, 20 / 400, 40 / 400]
    marked = metric_value(r, "tokens_per_s_per_watt", primary=("board",))
    assert marked.meter.meter == "board" and marked.samples == [0.1, 0.2, 0.4]


def test_a_meter_of_odd_json_types_ranks_last_without_an_exception():
    """results.jsonl comes from other labs: a quality or scope that is not a string (a list,
    a mapping: unhashable) is unrated and of no scope, never a TypeError."""
    r = rec([meter("odd", quality=["ok"], scope={"wall": 1}), meter("dram", scope="dram")])
    assert primary_meter(r).meter == "dram"
    r = rec([meter("odd", quality=["ok"], scope={"wall": 1}), meter("skew", quality="clock-skew", scope=None)])
    assert primary_meter(r).meter == "odd"  # both unrated, neither has a scope: configured order


def test_an_unknown_quality_string_and_a_non_string_quality_tie():
    r = rec([meter("future", quality="from-the-future"), meter("odd", quality=["ok"])])
    assert primary_meter(r).meter == "future"
    r = rec([meter("odd", quality=["ok"]), meter("future", quality="from-the-future")])
    assert primary_meter(r).meter == "odd"
