"""The llama-bench table: placement shown where known, reasons as footnotes; batch and
request-scenario cells read their energy through the same path."""
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
