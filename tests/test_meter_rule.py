"""One meter rule for a cell's energy figure (harness.figures.primary_meter): the procurement
headline ("At a glance"), the per-device tables and the claim verdicts quote the same meter
for the same cell, so a report never prints two energy-per-token figures for one cell
without saying so. The rule: the suite's `primary: true` meter, then the better quality,
then the widest scope, then the first configured.

Every expected figure here is set by hand in the records (J/token = 1 / tokens per joule of
that meter), so the meter a figure came from can be read off the figure itself."""
import json
from pathlib import Path
import re

import pytest

from harness.cells import load_cells
from harness.figures import metric_value, primary_keys, primary_meter
from harness.report.document import to_markdown
from harness.report.headline import choose_meter, primary_keys as run_keys
from harness.report.run_report import build_report_parts
from harness.verdicts import plain_median
from tests.test_claims import record

CLAIMS = """\
claims:
  - name: npu spends less energy per token than gpu
    metric: j_per_token
    subject: {backend: npu}
    baseline: {backend: gpu}
    workload: {model: m, batch: 1, prompt_len: 64, gen_len: 32}
    at_least: 1.01
"""


def meter(name, scope, tpj, quality="ok", method="counter"):
    return {"meter": name, "method": method, "scope": scope, "quality": quality,
            "reason": "generation: 3 updates < 10" if quality == "short-window" else None,
            "tokens_per_joule_gross": tpj, "j_per_generated_token_gross": 1 / tpj,
            "j_per_prompt_token_gross": 0.1 / tpj, "avg_w": 300.0, "idle_w": 50.0, "warnings": []}


def write_run(root: Path, name: str, records: list[dict], meters_config) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({
        "run_id": name, "suite": "t", "config": {"repetitions": 5, "meters": meters_config},
        "inventory": {"hostname": "lab", "cpu": {"model": "X"}, "gpus": []}}))
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return d


def one_cell_run(tmp_path: Path, meters: list[dict], meters_config, baseline_meters=None) -> Path:
    """An npu cell with these meters and a gpu cell (its own device) for a claim to compare
    against; 5 repetitions, so an energy figure's median is the meter's own figure."""
    npu = record(backend="npu", device="npu:0", n=5, energy={"meters": meters, "tokens": {}})
    gpu = record(backend="gpu", device="cuda:0", n=5, seed=1,
                 energy={"meters": baseline_meters or [meter("gpu-board", "gpu-board", 1.0)], "tokens": {}})
    return write_run(tmp_path, "lab-a", [npu, gpu], meters_config)


def report(tmp_path: Path, run: Path):
    claims = tmp_path / "claims.yaml"
    claims.write_text(CLAIMS)
    parts = build_report_parts([run], claims_path=claims, with_plots=False)
    return parts, to_markdown(parts.doc)


def headline_of(md: str, device: str = "npu:0") -> tuple[str, str]:
    """(best tokens/J text, energy meter used (why)) of one device's headline row."""
    glance = md.split("## At a glance")[1].split("\n## ")[0]
    (row,) = [line for line in glance.splitlines() if line.startswith(f"| {device}")]
    cells = [c.strip() for c in row.strip("|").split(" | ")]
    return cells[1], cells[2]


def table_j_per_token(md: str) -> str:
    """The J/token of the npu cell's tg row in its device's throughput table."""
    section = md.split("## Device: npu:0")[1].split("\n## ")[0]
    table = section.split("### Throughput (llama-bench style)")[1].split("\n\n")[1]
    header = [c.strip() for c in table.splitlines()[0].strip("|").split(" | ")]
    rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in table.splitlines()[2:]]
    (tg,) = [r for r in rows if r[header.index("test")] == "tg32"]
    return tg[header.index("J/token")]


def tokens_per_joule_shown(text: str) -> float:
    return float(re.match(r"([\d.,]+) tok/J \[", text).group(1).replace(",", ""))


def assert_one_meter(tmp_path, run, name, scope, tpj, why):
    """The headline, the throughput table, the procurement figures and the verdict all quote
    meter `name` for the npu cell: the figures printed are that meter's own."""
    parts, md = report(tmp_path, run)
    tpj_text, meter_text = headline_of(md)
    assert meter_text.startswith(f"{name} (counter, {scope}): {why}"), meter_text
    assert tokens_per_joule_shown(tpj_text) == pytest.approx(tpj)
    assert re.fullmatch(rf"{1 / tpj:.4g} \({scope}(, short)?\)", table_j_per_token(md)), table_j_per_token(md)
    (v,) = parts.verdicts
    sv = v.comparison.subject_value
    assert sv.meter.meter == name and plain_median(sv.samples) == pytest.approx(1 / tpj)
    assert v.comparison.subject.record.backend == "npu"
    # the procurement table's tokens/J (cell summaries) is the same meter's
    procurement = md.split("## Device: npu:0")[1].split("### Procurement figures")[1].split("###")[0]
    assert f"{tpj:g} " in procurement or f"{tpj:.4g}" in procurement, procurement
    return md


# --- no `primary: true`: quality, then scope ----------------------------------------------

def test_two_meters_no_primary_better_quality_wins_in_headline_table_and_verdict(tmp_path):
    """A board counter with a full window and a wall meter whose window was short: the
    headline used to quote the wall (widest scope) while the tables and the verdict quoted
    the board (best quality): two J/token for one cell. Now all quote the board."""
    run = one_cell_run(tmp_path, [meter("board", "gpu-board", 4.0), meter("wall", "wall", 2.0, "short-window")],
                       [{"type": "nvml", "name": "board"}, {"type": "csv-log", "name": "wall"}])
    md = assert_one_meter(tmp_path, run, "board", "gpu-board", 4.0,
                          "best quality (ok) of 2 meters (board, wall); set aside: wall (short-window)")
    assert "0.5 (wall" not in md  # the wall's J/token is nowhere in the tables


def test_two_meters_no_primary_same_quality_widest_scope_everywhere(tmp_path):
    """Both windows full: the widest scope, in the headline and the tables alike (the tables
    used to take the first configured meter, the board)."""
    run = one_cell_run(tmp_path, [meter("board", "gpu-board", 4.0), meter("wall", "wall", 2.0)],
                       [{"type": "nvml", "name": "board"}, {"type": "csv-log", "name": "wall"}])
    assert_one_meter(tmp_path, run, "wall", "wall", 2.0, "widest scope of 2 meters (board, wall)")


# --- `primary: true` on the narrower meter wins everywhere --------------------------------

@pytest.mark.parametrize("quality", ["ok", "short-window"])
def test_primary_on_the_narrower_meter_is_honoured_by_headline_table_and_verdict(tmp_path, quality):
    """The suite marks the board (`type: nvml`, no name: the key is its type, which the
    default name nvml:0 starts with) primary; the wall is wider and listed first, and (in one
    case) has the better window. The mark wins in the headline, the tables and the verdict."""
    run = one_cell_run(tmp_path, [meter("wall", "wall", 2.0), meter("nvml:0", "gpu-board", 4.0, quality)],
                       [{"type": "csv-log", "name": "wall"}, {"type": "nvml", "primary": True}])
    md = assert_one_meter(tmp_path, run, "nvml:0", "gpu-board", 4.0, "marked `primary: true` in the suite")
    short = ", short" if quality == "short-window" else ""
    assert table_j_per_token(md) == f"0.25 (gpu-board{short})"


def test_primary_meter_without_a_figure_falls_back_and_says_so(tmp_path):
    run = one_cell_run(tmp_path, [meter("board", "gpu-board", 4.0), meter("wall", "wall", 2.0),
                                  {"meter": "pdu", "method": "external", "scope": "wall", "quality": "unavailable",
                                   "reason": "log ended"}],
                       [{"type": "nvml", "name": "board"}, {"type": "csv-log", "name": "wall"},
                        {"type": "csv-log", "name": "pdu", "primary": True}])
    assert_one_meter(tmp_path, run, "wall", "wall", 2.0,
                     "widest scope of 2 meters (board, wall); no figure from the `primary: true` meter (pdu)")


# --- the rule itself, and the device headline over several cells --------------------------

def test_the_rule_in_one_place(tmp_path):
    npu = record(backend="npu", device="npu:0", n=5, energy={"meters": [
        meter("est", "wall", 9.0, "estimate", method="estimate"), meter("pkg", "cpu-package", 3.0),
        meter("board", "gpu-board", 4.0), meter("wall", "wall", 2.0, "short-window")], "tokens": {}})
    (c,) = load_cells([write_run(tmp_path, "r", [npu], [])])
    r = c.record
    assert primary_meter(r).meter == "board"  # ok beats short-window (wall) and estimate; board wider than pkg
    assert primary_meter(r, primary=("wall",)).meter == "wall"  # a mark beats quality
    assert primary_meter(r, primary=("est",)).meter == "est"  # ... even an estimate's
    assert primary_meter(r, scope="wall").meter == "wall"  # a claim's scope: the wall's measurement over the estimate
    assert primary_meter(r, primary=("rapl",)).meter == "board"  # a key naming no meter marks nothing
    assert metric_value(c, "j_per_token").meter.meter == "board"
    pkg = metric_value(c, "j_per_token", primary=("pkg",))
    assert pkg.meter.meter == "pkg" and plain_median(pkg.samples) == pytest.approx(1 / 3.0)


def test_device_headline_ranks_on_the_meter_most_cells_quote_and_names_a_cell_that_differs(tmp_path):
    """Three cells of one device: two with both meters full (wall), one whose wall window was
    short (board there). The headline ranks on the wall (2 of 3 cells) and says so; where its
    best cell would be the third, its own meter is named beside the figure."""
    cells = [record(backend="npu", device="npu:0", batch=b, n=5, seed=b, energy={"meters": [
        meter("board", "gpu-board", 4.0 + b), meter("wall", "wall", w, q)], "tokens": {}})
        for b, w, q in ((1, 2.0, "ok"), (2, 2.5, "ok"), (4, 3.0, "short-window"))]
    run = write_run(tmp_path, "r", cells, [{"type": "nvml", "name": "board"}, {"type": "csv-log", "name": "wall"}])
    loaded = load_cells([run])
    choice = choose_meter(loaded, run_keys(loaded))
    assert choice.meter == "wall"
    assert choice.why == "widest scope of 2 meters (board, wall); the rule picks it for 2 of 3 cells (board: 1)"
    parts = build_report_parts([run], with_plots=False)
    tpj_text, meter_text = headline_of(to_markdown(parts.doc))
    # best wall tokens/J is the batch-4 cell's 3.0 (short-window is trusted), whose tables quote the board
    assert tokens_per_joule_shown(tpj_text) == pytest.approx(3.0)
    assert ("(this cell's tables quote board (gpu-board): best quality (ok) of 2 meters (board, wall); "
            "set aside: wall (short-window))") in tpj_text
    assert meter_text.startswith("wall (counter, wall): widest scope")


# --- result folders from elsewhere ---------------------------------------------------------

@pytest.mark.parametrize("config", [
    None, [1], "meters", {"meters": "wall"}, {"meters": {"type": "nvml"}},
    {"meters": [1, None, "x", {"primary": "yes", "type": "nvml"}, {"primary": 1, "type": "nvml"},
                {"primary": True}, {"primary": True, "name": 3, "type": ["nvml"]}, {"primary": True, "name": ""}]},
])
def test_hostile_run_json_marks_nothing_and_never_raises(config):
    assert primary_keys({"config": config}) == ()


def test_primary_keys_name_then_type():
    meta = {"config": {"meters": [{"type": "nvml", "primary": True}, {"type": "csv-log", "name": "wall"},
                                  {"type": "rapl", "name": "host", "primary": True},
                                  {"type": "command", "name": "", "primary": True}]}}
    assert primary_keys(meta) == ("nvml", "host", "command")
    assert primary_keys(None) == () and primary_keys([]) == ()


def test_a_run_json_of_odd_shape_still_reports_on_the_rule(tmp_path):
    run = one_cell_run(tmp_path, [meter("board", "gpu-board", 4.0), meter("wall", "wall", 2.0)],
                       [{"type": "nvml", "name": "board", "primary": "yes"}, "wall", 7])
    assert_one_meter(tmp_path, run, "wall", "wall", 2.0, "widest scope of 2 meters (board, wall)")


def test_an_old_record_with_two_meters_loads_and_quotes_one_meter(tmp_path):
    """A version-1 record (no schema_version, `generation_avg_w`, no `primary` anywhere) from
    an older harness: it loads, and headline, table and verdict agree on one meter."""
    npu = record(backend="npu", device="npu:0", n=5, energy={"meters": [
        meter("board", "gpu-board", 4.0), meter("wall", "wall", 2.0, "short-window")], "tokens": {}})
    for m in npu["energy"]["meters"]:
        m["generation_avg_w"] = m.pop("avg_w")
    assert "schema_version" not in npu
    run = one_cell_run(tmp_path, npu["energy"]["meters"], [{"type": "nvml", "name": "board"}])
    lines = (run / "results.jsonl").read_text().splitlines()
    assert all("schema_version" not in line for line in lines)
    assert_one_meter(tmp_path, run, "board", "gpu-board", 4.0,
                     "best quality (ok) of 2 meters (board, wall); set aside: wall (short-window)")


@pytest.mark.parametrize("config", [[1], "meters", 5])
def test_a_run_json_whose_config_is_no_mapping_reports_without_a_traceback(tmp_path, config):
    run = one_cell_run(tmp_path, [meter("board", "gpu-board", 4.0), meter("wall", "wall", 2.0)], [])
    meta = json.loads((run / "run.json").read_text())
    meta["config"] = config
    (run / "run.json").write_text(json.dumps(meta))
    md = assert_one_meter(tmp_path, run, "wall", "wall", 2.0, "widest scope of 2 meters (board, wall)")
    runs = md.split("## Runs")[1].split("\n## ")[0]
    (row,) = [line for line in runs.splitlines() if line.startswith("| lab-a")]
    assert row.rstrip().endswith("| - |")  # repetitions unknown, said as "-"


def test_report_command_on_a_run_json_whose_config_is_a_list(tmp_path):
    from harness.cli import main

    run = one_cell_run(tmp_path, [meter("board", "gpu-board", 4.0), meter("wall", "wall", 2.0, "short-window")], [])
    meta = json.loads((run / "run.json").read_text())
    meta["config"] = [1]
    (run / "run.json").write_text(json.dumps(meta))
    assert main(["report", str(run), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert headline_of(md)[1].startswith("board (counter, gpu-board): best quality (ok)")
    assert table_j_per_token(md) == "0.25 (gpu-board)"


def test_the_table_harness_run_prints_honours_the_primary_mark(tmp_path, capsys):
    """`harness run` ends with the run's table (cli._print_records, given the run's run.json):
    its J/token is the marked narrower meter's, as the report's is; without the mark the
    same records quote the wider meter."""
    from harness.cli import _print_records
    from harness.results import load_run

    run = one_cell_run(tmp_path, [meter("wall", "wall", 2.0), meter("nvml:0", "gpu-board", 4.0)],
                       [{"type": "csv-log", "name": "wall"}, {"type": "nvml", "primary": True}])
    meta, records = load_run(run)
    _print_records(run, meta, records, title="t")
    marked = capsys.readouterr().out
    assert "0.25 (gpu-board)" in marked and "0.5 (wall)" not in marked
    _print_records(run, {**meta, "config": {"meters": []}}, records, title="t")
    unmarked = capsys.readouterr().out
    assert "0.5 (wall)" in unmarked and "0.25 (gpu-board)" not in unmarked
