"""The llama-bench table: placement shown where known, reasons as footnotes."""
from harness.report.table import bench_rows, footnote_reasons

BASE = {"cell_id": "x", "model": "tiny", "params": 2_885_888, "dtype": "fp32", "precision": "fp32", "backend": "b",
        "device": "cpu", "batch": 1, "prompt_len": 8, "gen_len": 4, "status": "ok",
        "metrics": {"prefill_tps": {"mean": 10.0, "sd": 1.0}, "decode_tps": {"mean": 5.0, "sd": 0.5}},
        "accuracy": {"passed": True, "rel_err": 1e-6},
        "energy": {"meters": [{"meter": "rapl", "quality": "unavailable", "reason": "no powercap"}]}}


def test_placement_column_only_when_a_backend_reports_it():
    assert "placement" not in bench_rows([BASE]).columns
    fallback = dict(BASE, load={"details": {"placement": {
        "summary": "QNN: 90, CPU: 10", "requested_provider": "QNNExecutionProvider",
        "compute_share_off_requested": 0.25}}})
    df = bench_rows([BASE, fallback])
    assert df["placement"].iloc[-1] == "QNN: 90, CPU: 10; 25 % of compute off QNNExecutionProvider"
    assert df["placement"].iloc[0] == ""


def test_energy_reasons_become_footnotes_once():
    df, notes = footnote_reasons(bench_rows([BASE, dict(BASE, batch=2)]))
    assert set(df["J/token"]) == {"unavailable [1]"} and notes == ["[1] no powercap"]
