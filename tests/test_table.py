"""The llama-bench table: placement shown where known, reasons as footnotes; batch and
request-scenario cells read their energy through the same path."""
import re

import pytest

from harness.figures import metric_value, primary_meter
from harness.records import CellRecord, EnergyRecord, MeterEnergy, record_from_json
from harness.report.scenario_table import scenario_rows
from harness.report.table import bench_rows, footnote_reasons

BASE = {"cell_id": "x", "model": "tiny", "params": 2_885_888, "dtype": "fp32", "precision": "fp32", "backend": "b",
        "device": "cpu", "batch": 1, "prompt_len": 8, "gen_len": 4, "status": "ok",
        "metrics": {"prefill_tps": {"mean": 10.0, "sd": 1.0}, "decode_tps": {"mean": 5.0, "sd": 0.5}},
        "accuracy": {"passed": True, "rel_err": 1e-6},
        "energy": {"meters": [{"meter": "rapl", "quality": "unavailable", "reason": "no powercap"}]}}


def rec(**kw) -> CellRecord:
    return record_from_json(dict(BASE, **kw))


def test_placement_column_only_when_a_backend_reports_it():
    assert "placement" not in bench_rows([rec()]).columns
    fallback = rec(load={"details": {"placement": {
        "summary": "QNN: 90, CPU: 10", "requested_provider": "QNNExecutionProvider",
        "compute_share_off_requested": 0.25}}})
    df = bench_rows([rec(), fallback])
    assert df["placement"].iloc[-1] == "QNN: 90, CPU: 10; 25 % of compute off QNNExecutionProvider"
    assert df["placement"].iloc[0] == ""


def test_energy_reasons_become_footnotes_once():
    df, notes = footnote_reasons(bench_rows([rec(), rec(batch=2)]))
    assert set(df["J/token"]) == {"unavailable [1]"} and notes == ["[1] no powercap"]


def _meters(j_per_token: float) -> list[MeterEnergy]:
    """An estimate listed first and a measurement second: tables must show the measurement."""
    return [MeterEnergy(meter="est", method="estimate", scope="wall", quality="estimate", avg_w=300.0,
                        j_per_generated_token_gross=10 * j_per_token, tokens_per_joule_gross=0.1 / j_per_token),
            MeterEnergy(meter="nvml", method="counter", scope="gpu-board", quality="ok", avg_w=250.0,
                        j_per_generated_token_gross=j_per_token, tokens_per_joule_gross=1 / j_per_token)]


def test_batch_and_request_scenario_cells_share_one_energy_path():
    batch = CellRecord(cell_id="g/m/fp32/b4/p8/g4/offline", backend="g", backend_type="torch", model="m",
                       dtype="fp32", batch=4, prompt_len=8, gen_len=4, scenario="offline", status="ok", valid=True,
                       energy=EnergyRecord(window="phases", meters=_meters(0.02)))
    server = CellRecord(cell_id="g/m/fp32/b4/p8/g4/server@2", backend="g", backend_type="torch", model="m",
                        dtype="fp32", batch=4, prompt_len=8, gen_len=4, scenario="server@2", status="ok", valid=True,
                        scenario_config={"type": "server", "rates": [2.0]},
                        summary=[{"achieved_rps": 2.0, "output_tps": 8.0}],
                        energy=EnergyRecord(window="steady", meters=_meters(0.05)))
    assert server.is_request_scenario and not batch.is_request_scenario
    for r, j in ((batch, 0.02), (server, 0.05)):
        m = primary_meter(r, "j_per_token")
        assert m.meter == "nvml"  # the measurement, not the estimate listed before it
        assert metric_value(r, "j_per_token").samples == [j]
        assert metric_value(r, "tokens_per_joule").samples == [pytest.approx(1 / j)]
    assert bench_rows([batch])["J/token"].iloc[-1] == "0.02 (gpu-board)"
    assert scenario_rows([server])["J/out-token"].iloc[0] == "0.05 (gpu-board)"


def _tps(samples: list[float]) -> dict:
    return {"mean": sum(samples) / len(samples), "sd": 1.0, "median": sorted(samples)[len(samples) // 2],
            "n": len(samples), "samples": samples}


def test_t_s_is_the_median_with_its_interval_and_wide_intervals_are_marked(capsys):
    from harness.report.table import print_table

    steady = rec(metrics={"prefill_tps": _tps([100.0] * 5), "decode_tps": _tps([50.0, 50.0, 50.0, 50.0, 51.0])})
    noisy = rec(batch=2, metrics={"prefill_tps": _tps([50.0, 100.0, 150.0, 200.0, 250.0]),
                                  "decode_tps": _tps([10.0, 30.0, 20.0, 40.0, 25.0])})
    df = bench_rows([steady, noisy])
    tps = df["t/s"].tolist()
    assert tps[0] == "100 [100, 100]"  # every sample equal: the interval is the point, not noisy
    assert re.fullmatch(r"50 \[50, 5[01](\.\d+)?\]", tps[1])  # half-width <= 1 % of 50: not noisy
    assert re.fullmatch(r"150 \[[\d.]+, [\d.]+\] ~", tps[2])  # samples 50..250: far wider than +-5 %
    assert re.fullmatch(r"25 \[[\d.]+, [\d.]+\] ~", tps[3])
    assert not any("±" in t for t in tps)
    print_table(df)
    out = capsys.readouterr().out
    assert "median [95 % bootstrap interval]" in out and "~ noisy" in out and "5 %" in out
    print_table(bench_rows([steady]))
    assert "~ noisy" not in capsys.readouterr().out  # the footnote only when a row is marked


def test_invalid_and_failed_rows_keep_their_words_and_ci_adds_n():
    bad = rec(metrics={"prefill_tps": _tps([100.0] * 5), "decode_tps": _tps([50.0] * 5)},
              accuracy={"passed": False, "rel_err": 0.5}, status="invalid", valid=False)
    failed = rec(status="failed", error={"message": "boom\nmore"}, metrics={})
    df = bench_rows([bad, failed], ci=True)
    assert df["t/s"].tolist() == ["INVALID 100 [100, 100]", "INVALID 50 [50, 50]", "FAILED"]
    assert df["n"].tolist() == [5, 5, "-"] and "median [95% CI]" not in df.columns


def test_a_speed_mismatch_is_tagged_beside_the_figure():
    flagged = MeterEnergy(meter="smi", method="sampled", scope="wall", quality="speed-mismatch",
                          reason="speed-mismatch: generation energy window ran at 5 tok/s vs timed 40 tok/s [35, 45]",
                          j_per_generated_token_gross=0.5)
    r = rec(energy={"meters": [flagged.to_json()]})
    assert bench_rows([r])["J/token"].iloc[-1] == "0.5 (wall, SPEED MISMATCH)"
