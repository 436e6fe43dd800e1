"""Typed records: every results.jsonl line is a CellRecord with its schema version; runs
written by the previous schema (tests/data/v1_runs, recorded by the harness before the
measurement core was unified) are upgraded on read; what cannot be read is refused with
its file and line."""
from dataclasses import replace
import json
from pathlib import Path
import shutil
import subprocess
import sys

import pytest

from harness.records import SCHEMA_VERSION, CellJob, CellRecord, EnergyRecord, MeterEnergy, PlannedCell, \
    RecordError, record_from_json
from harness.results import ResultsError, append_record, load_run, read_records

V1 = Path(__file__).parent / "data" / "v1_runs"
ROOT = Path(__file__).resolve().parent.parent


def v1_lines(run: str) -> list[dict]:
    return [json.loads(l) for l in (V1 / run / "results.jsonl").read_text().splitlines() if l.strip()]


def test_v1_batch_records_upgrade_with_every_figure_kept():
    raw = v1_lines("before-smoke-est")
    _, records = load_run(V1 / "before-smoke-est")
    assert len(records) == len(raw) == 6
    for old, new in zip(raw, records):
        assert "schema_version" not in old and new.schema_version == SCHEMA_VERSION
        assert new.cell_id == old["cell_id"] and new.batch == old["batch"] and new.status == old["status"]
        assert new.metrics == old["metrics"] and new.samples == old["samples"]  # timings untouched
        assert new.energy.window == "phases" and new.energy.status == "ok"
        (m_old,), (m_new,) = old["energy"]["meters"], new.energy.meters
        assert isinstance(m_new, MeterEnergy) and m_new.method == "estimate"
        for key in ("tokens_per_joule_gross", "j_per_generated_token_gross", "j_per_prompt_token_gross"):
            assert getattr(m_new, key) == m_old[key] and m_old[key] > 0
        assert m_new.avg_w == m_old["generation_avg_w"] == pytest.approx(100.0)


def test_v1_request_scenario_records_get_the_one_energy_shape():
    raw = v1_lines("before-server")
    _, records = load_run(V1 / "before-server")
    assert [r.scenario for r in records] == ["server@4", "server@8"]
    for old, new in zip(raw, records):
        assert new.is_request_scenario and new.summary == old["summary"]
        assert new.energy.window == "steady"
        (m_old,), (m_new,) = old["energy"]["meters"], new.energy.meters
        # the old steady shape's names map onto the batch shape's: one reader for both
        assert m_new.j_per_generated_token_gross == m_old["j_per_output_token_gross"] > 0
        assert m_new.tokens_per_joule_gross == m_old["output_tokens_per_j_gross"]
        assert m_new.energy_per_request_gross_j == m_old["j_per_request_gross"]
        assert m_new.avg_w == m_old["avg_w"]


def test_a_record_round_trips_through_json():
    _, records = load_run(V1 / "before-server")
    for r in records:
        again = record_from_json(json.loads(json.dumps(r.to_json())))
        assert again == r


def test_failure_record_and_job_round_trip():
    cell = PlannedCell("torch-cpu", "torch", "tiny", "fp32", 4, 32, 8, "server@4", 4.0)
    rec = CellRecord.failure(cell, "timeout", "cell ran past timeout_s=5", device="cpu", params=10)
    back = record_from_json(rec.to_json())
    assert back == rec and back.failed and not back.ok and not back.invalid and back.error.kind == "timeout"
    assert back.is_request_scenario  # a failed server cell still belongs in the request table
    job = CellJob("torch-cpu", "torch", {"device": "cpu"}, "cpu", "tiny", "fp32", None, 0, 1, 5,
                  {"type": "offline"}, {"enabled": True}, {"enabled": True}, None, "/tmp/x", None, [cell])
    assert CellJob.from_json(json.loads(json.dumps(job.to_json()))) == job


def write_run(tmp_path: Path, lines: list[str]) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"run_id": "run", "status": "complete"}))
    (run / "results.jsonl").write_text("".join(l + "\n" for l in lines))
    return run


def test_newer_schema_and_non_records_are_refused_with_file_and_line(tmp_path):
    good = json.dumps(v1_lines("before-smoke-est")[0])
    newer = json.dumps(dict(v1_lines("before-smoke-est")[1], schema_version=SCHEMA_VERSION + 1))
    run = write_run(tmp_path, [good, newer])
    with pytest.raises(ResultsError, match=r"results\.jsonl:2: schema_version 3 was written by a newer"):
        load_run(run)
    (run / "results.jsonl").write_text(good + "\n[1, 2]\n")
    with pytest.raises(ResultsError, match=r"results\.jsonl:2: expected a JSON object"):
        load_run(run)
    (run / "results.jsonl").write_text(good + '\n{"cell_id": "x"}\n')
    with pytest.raises(ResultsError, match=r"results\.jsonl:2: not a cell record: missing backend"):
        load_run(run)
    (run / "results.jsonl").write_text(good + '\n' + json.dumps(dict(json.loads(good), metrics=[1])) + "\n")
    with pytest.raises(ResultsError, match=r"results\.jsonl:2: metrics: expected a mapping"):
        load_run(run)


def test_a_torn_line_is_skipped_and_the_next_append_starts_fresh(tmp_path, capsys):
    lines = [json.dumps(l) for l in v1_lines("before-smoke-est")[:2]]
    run = write_run(tmp_path, lines)
    with open(run / "results.jsonl", "ab") as f:
        f.write(lines[0][:40].encode())  # a writer killed mid-line
    assert len(read_records(run / "results.jsonl")) == 2
    # skipped, but said (once), naming the file and line: a record never vanishes without a word
    assert read_records(run / "results.jsonl") and \
        capsys.readouterr().err.count(f"warning: {run / 'results.jsonl'}:3: skipped an unfinished record") == 1
    rec = replace(record_from_json(json.loads(lines[0])), cell_id="again")
    append_record(run / "results.jsonl", rec)
    got = read_records(run / "results.jsonl")
    assert [r.cell_id for r in got][-1] == "again" and got[-1].schema_version == SCHEMA_VERSION


def test_energy_record_json_keeps_the_report_field_names():
    m = MeterEnergy(meter="rapl", method="counter", scope="cpu-package", quality="ok", tokens_per_joule_gross=2.0,
                    j_per_generated_token_gross=0.5, avg_w=40.0)
    d = EnergyRecord(meters=[m]).to_json()
    assert d["meters"][0]["tokens_per_joule_gross"] == 2.0 and d["meters"][0]["avg_w"] == 40.0
    assert EnergyRecord.from_json(d).meters[0] == m
    assert m.figure("j_per_token") == 0.5 and not m.is_estimate


@pytest.mark.parametrize("run", ["before-smoke-est", "before-server"])
def test_reports_render_from_a_v1_run_folder(tmp_path, run):
    folder = tmp_path / run
    shutil.copytree(V1 / run, folder)
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "harness", "report", str(folder), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = (out / "report.md").read_text()
    # the figures the v1 harness printed for these runs
    assert "tiny" in text and ("0.8105 (estimate)" in text if run == "before-server" else "onnx-cpu" in text)
    assert "Traceback" not in proc.stderr
