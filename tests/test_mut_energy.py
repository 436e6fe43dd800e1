"""Kills mutants of the energy arithmetic in harness/energy.py (issue 19): J per prompt token,
per decode token (decode = generation - prefill per repetition, over G - sequences tokens), per
request, tokens per joule, gross and net; and the short-window rule. Expected values by hand."""
import pytest

from harness.energy import EnergySettings, _div, _fin, _judge, batch_figures, steady_figures
from harness.meters.base import EnergyReading

TOKENS = {"prompt_tokens": 256, "generated_tokens": 128, "decode_tokens": 124, "sequences": 4}


def test_batch_figures_by_hand():
    # prefill window: 3 repeats, 30 J gross / 12 J net; generation: 2 repeats, 50 J / 20 J
    out, warnings = batch_figures({"prefill": (30.0, 12.0), "generation": (50.0, 20.0)},
                                  {"prefill": 3, "generation": 2}, TOKENS)
    # per repetition: prefill 10 J (4 net), generation 25 J (10 net), decode 15 J (6 net)
    assert out["j_per_prompt_token_gross"] == pytest.approx(10 / 256)
    assert out["j_per_prompt_token_net"] == pytest.approx(4 / 256)
    assert out["j_per_generated_token_gross"] == pytest.approx(15 / 124)
    assert out["j_per_generated_token_net"] == pytest.approx(6 / 124)
    assert out["j_per_generated_token_e2e_gross"] == pytest.approx(25 / 128)
    assert out["j_per_generated_token_e2e_net"] == pytest.approx(10 / 128)
    assert out["tokens_per_joule_gross"] == pytest.approx(128 / 25)
    assert out["tokens_per_joule_net"] == pytest.approx(128 / 10)
    assert out["energy_per_request_gross_j"] == pytest.approx(25 / 4)
    assert out["energy_per_request_net_j"] == pytest.approx(10 / 4)
    assert len(out) == 10 and warnings == []


def test_negative_decode_energy_is_warned_about_gross_only():
    out, warnings = batch_figures({"prefill": (30.0, 30.0), "generation": (20.0, 40.0)},
                                  {"prefill": 1, "generation": 1}, TOKENS)
    assert out["j_per_generated_token_gross"] == pytest.approx(-10 / 124)
    assert out["j_per_generated_token_net"] == pytest.approx(10 / 124)
    assert warnings == ["decode energy came out negative: the generation window used less energy per repetition "
                        "than the prefill window (meter noise exceeds decode energy; lengthen windows or raise "
                        "min_updates)"]
    # net negative, gross positive: no warning (net is gross less an idle estimate)
    _, warnings = batch_figures({"prefill": (30.0, 30.0), "generation": (40.0, 20.0)},
                                {"prefill": 1, "generation": 1}, TOKENS)
    assert warnings == []
    # exactly zero decode energy is not negative
    _, warnings = batch_figures({"prefill": (30.0, 30.0), "generation": (30.0, 30.0)},
                                {"prefill": 1, "generation": 1}, TOKENS)
    assert warnings == []


def test_missing_readings_give_none_not_zero():
    out, warnings = batch_figures({"prefill": (None, None), "generation": (50.0, None)},
                                  {"prefill": 1, "generation": 2}, TOKENS)
    assert out["j_per_prompt_token_gross"] is None and out["j_per_generated_token_gross"] is None
    assert out["j_per_generated_token_e2e_gross"] == pytest.approx(25 / 128)
    assert out["j_per_generated_token_e2e_net"] is None and out["tokens_per_joule_net"] is None
    assert out["energy_per_request_net_j"] is None and warnings == []
    out, _ = batch_figures({"prefill": (10.0, 1.0), "generation": (None, 3.0)}, {"prefill": 1, "generation": 1},
                           TOKENS)
    assert out["j_per_generated_token_gross"] is None
    assert out["j_per_generated_token_net"] == pytest.approx(2 / 124)


def test_no_decode_tokens_and_non_positive_generation_energy():
    out, _ = batch_figures({"prefill": (10.0, 1.0), "generation": (0.0, -2.0)}, {"prefill": 1, "generation": 1},
                           dict(TOKENS, decode_tokens=None))
    assert out["j_per_generated_token_gross"] is None
    assert out["tokens_per_joule_gross"] is None and out["tokens_per_joule_net"] is None
    assert out["j_per_generated_token_e2e_net"] == pytest.approx(-2 / 128)


def test_steady_figures_by_hand():
    out, warnings = steady_figures({"steady": (80.0, 30.0)}, output_tokens=400.0, requests_completed=8)
    assert out == {"j_per_generated_token_gross": pytest.approx(0.2), "tokens_per_joule_gross": pytest.approx(5.0),
                   "energy_per_request_gross_j": pytest.approx(10.0),
                   "j_per_generated_token_net": pytest.approx(0.075), "tokens_per_joule_net": pytest.approx(400 / 30),
                   "energy_per_request_net_j": pytest.approx(3.75)}
    assert warnings == []
    out, _ = steady_figures({"steady": (0.0, None)}, output_tokens=400.0, requests_completed=0)
    assert out["tokens_per_joule_gross"] is None and out["energy_per_request_gross_j"] is None
    assert out["j_per_generated_token_gross"] == 0.0 and out["j_per_generated_token_net"] is None
    out, _ = steady_figures({"steady": (-1.0, 2.0)}, output_tokens=4.0, requests_completed=1)
    assert out["tokens_per_joule_gross"] is None and out["tokens_per_joule_net"] == 2.0


def test_div_and_fin():
    assert _div(6.0, 3.0) == 2.0
    assert _div(None, 3.0) is None and _div(6.0, None) is None and _div(6.0, 0) is None
    assert _div(0.0, 2.0) == 0.0
    assert _fin(2.5) == 2.5 and _fin(None) is None
    assert _fin(float("inf")) is None and _fin(float("nan")) is None and _fin(-float("inf")) is None


def reading(duration=2.0, updates=20, quality="ok", joules=10.0):
    return EnergyReading(meter="m", method="counter", scope="gpu-board", joules=joules, duration_s=duration,
                         n_updates=updates, update_period_s=0.1, quality=quality)


S = EnergySettings(idle_s=1.0, min_window_s=1.0, min_updates=10)


@pytest.mark.parametrize("duration,updates,reason", [
    (1.0, 10, None),                      # both at their minimum: long enough
    (0.999, 10, "0.999 s < min_window_s 1 s"),
    (1.0, 9, "9 meter updates < min_updates 10"),
    (0.5, 3, "0.500 s < min_window_s 1 s; 3 meter updates < min_updates 10"),
])
def test_short_window_rule_at_its_minimums(duration, updates, reason):
    r = _judge(reading(duration, updates), S, "generation")
    assert r.quality == ("ok" if reason is None else "short-window")
    assert r.reason == reason


def test_idle_windows_are_judged_by_updates_only():
    assert _judge(reading(0.5, 10), S, "idle-before").quality == "ok"
    assert _judge(reading(0.5, 10), S, "idle-after").quality == "ok"
    r = _judge(reading(0.5, 9), S, "idle-after")
    assert (r.quality, r.reason) == ("short-window", "9 meter updates < min_updates 10")


def test_unavailable_or_estimated_readings_are_left_alone():
    r = reading(0.1, 0, quality="estimate")
    assert _judge(r, S, "generation") is r
    r = reading(0.1, 0, joules=None)
    assert _judge(r, S, "generation") is r


def test_tokens_per_joule_below_one_joule():
    # 0.5 J per repetition is a valid (tiny) energy: 128 tokens / 0.5 J
    out, _ = batch_figures({"prefill": (0.2, 0.1), "generation": (1.0, 0.5)}, {"prefill": 1, "generation": 2},
                           TOKENS)
    assert out["tokens_per_joule_gross"] == pytest.approx(256.0)
    assert out["tokens_per_joule_net"] == pytest.approx(512.0)
    out, _ = steady_figures({"steady": (0.5, 0.25)}, output_tokens=4.0, requests_completed=1)
    assert out["tokens_per_joule_gross"] == pytest.approx(8.0) and out["tokens_per_joule_net"] == pytest.approx(16.0)
