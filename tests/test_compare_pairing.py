"""`harness compare RUN_A RUN_B` pairs like with like: two real runs of the same suite (torch and
onnxruntime on the tiny model, 3 repetitions) compare onnx with onnx and torch with torch; the
old "everything against run A's first backend" stays available as --against-first."""
import json
import shutil
import statistics

import pytest

from harness.cells import load_cells
from harness.cli import main
from harness.report.compare import build_compare
from tests.two_machine_runs import records, two_runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return two_runs(tmp_path_factory)


def _decode_samples(run, backend):
    (rec,) = [r for r in records(run) if r["backend"] == backend]
    return rec["metrics"]["decode_tps"]["samples"]


def test_default_pairs_each_backend_with_the_same_backend(runs, tmp_path, capsys):
    a, b = runs
    md = tmp_path / "cmp.md"
    assert main(["compare", str(a), str(b), "--markdown", str(md), "--quiet"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Pairing: each backend against the same backend name in the first run" in out
    text = md.read_text()
    # one section per backend of machine-b, each against the same backend of machine-a
    for be in ("torch-cpu", "onnx-cpu"):
        assert f"## machine-b: {be} @ " in text
        section = text.split(f"## machine-b: {be} @ ")[1].split("\n## ")[0]
        assert f"against A: machine-a: {be} @ " in section.splitlines()[0]
    assert "machine-b: onnx-cpu" in text and "against A: machine-a: torch-cpu" not in \
        text.split("## machine-b: onnx-cpu")[1].split("\n")[0]

    cmp = build_compare(load_cells([a, b]), ("decode_tps",))
    assert cmp.pairing == "backend" and not cmp.note
    assert {(o[0], o[1], r[0], r[1]) for o, r in cmp.refs.items()} == {
        ("machine-b", "torch-cpu", "machine-a", "torch-cpu"), ("machine-b", "onnx-cpu", "machine-a", "onnx-cpu")}
    assert len(cmp.rows) == 2 and not cmp.unmatched
    for row in cmp.rows:
        be = row.ref.record.backend
        assert row.other.record.backend == be and row.ref.run_id == "machine-a" and row.other.run_id == "machine-b"
        # the ratio's point is median(B) / median(A) of the raw repetitions, computed here from the files
        expect = statistics.median(_decode_samples(b, be)) / statistics.median(_decode_samples(a, be))
        assert row.ratio.ratio == pytest.approx(expect, rel=1e-9)
    # --same-backend is the default under its old name
    same = build_compare(load_cells([a, b]), ("decode_tps",), same_backend=True)
    assert same.refs == cmp.refs


def test_against_first_keeps_the_old_behaviour(runs, tmp_path, capsys):
    a, b = runs
    cells = load_cells([a, b])
    cmp = build_compare(cells, ("decode_tps",), against_first=True)
    first = (("machine-a", "torch-cpu", "cpu"))
    assert cmp.pairing == "first" and set(cmp.refs.values()) == {first}
    assert set(cmp.refs) == {("machine-a", "onnx-cpu", "cpu"), ("machine-b", "torch-cpu", "cpu"),
                             ("machine-b", "onnx-cpu", "cpu")}
    md = tmp_path / "first.md"
    assert main(["compare", str(a), str(b), "--against-first", "--markdown", str(md), "--quiet"]) == 0
    assert "Reference (A): **machine-a: torch-cpu @" in md.read_text()
    assert "Pairing: every configuration against the first one" in md.read_text()
    capsys.readouterr()
    assert main(["compare", str(a), str(b), "--against-first", "--same-backend"]) == 2
    assert "contradict" in capsys.readouterr().err


def test_one_run_or_no_shared_backend_falls_back_and_says_so(runs, tmp_path):
    a, b = runs
    one = build_compare(load_cells([a]), ("decode_tps",))  # one run holding two backends
    assert one.pairing == "first" and "one run" in one.note
    assert {(o[1], r[1]) for o, r in one.refs.items()} == {("onnx-cpu", "torch-cpu")}
    renamed = tmp_path / "machine-c"
    shutil.copytree(b, renamed)
    meta = json.loads((renamed / "run.json").read_text())
    (renamed / "run.json").write_text(json.dumps(dict(meta, run_id="machine-c")))
    recs = records(renamed)
    for r in recs:
        r["backend"] = r["backend"].replace("-cpu", "-other")
        r["cell_id"] = r["cell_id"].replace("-cpu", "-other")
    (renamed / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    cmp = build_compare(load_cells([a, renamed]), ("decode_tps",))
    assert cmp.pairing == "first" and "no backend name of machine-a appears in another run" in cmp.note
    # a later run with one shared and one new backend: the shared one is paired, the new one named
    mixed = build_compare(load_cells([a, b, renamed]), ("decode_tps",))
    assert mixed.pairing == "backend" and "machine-c: torch-other" in mixed.note
    assert all(o[0] == "machine-b" for o in mixed.refs)
