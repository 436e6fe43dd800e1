"""What a procurement reader sees first (issue 20): the verdicts and, per device, the procurement
headline (best tokens/J and cost per million tokens, each with its meter and why that meter) at
the top of report.md and in `report --print`; one central figure (median [95 % CI]); a cost
without its energy share shown as incomplete; failures in full; a required claim with no data
failing the gate. On two real runs of the same suite (tests/two_machine_runs.py)."""
import json
from pathlib import Path
import re
import shutil
import statistics
import subprocess
import sys

import pytest

from harness.cli import main
from tests.two_machine_runs import ROOT, records, two_runs

PRICES = ROOT / "workloads" / "prices.example.yaml"  # cpu: 9000 over 5 years, u 0.6, PUE 1.3, 0.12 per kWh
TRUSTED = ("ok", "short-window", "estimate")

CLAIMS = """\
claims:
  - name: onnx decodes at least 0.01x as fast as torch
    metric: decode_tps
    subject: {backend: onnx-cpu, run: machine-b}
    baseline: {backend: torch-cpu, run: machine-a}
    workload: {model: tiny, batch: 1, prompt_len: 16, gen_len: 8}
    at_least: 0.01
    required: true
  - name: onnx reaches its first token 2x sooner
    metric: ttft_s
    subject: {backend: onnx-cpu, run: machine-b}
    baseline: {backend: torch-cpu, run: machine-a}
    workload: {model: tiny, batch: 1, prompt_len: 16, gen_len: 8}
    at_least: 2
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return two_runs(tmp_path_factory)


@pytest.fixture(scope="module")
def claims(tmp_path_factory):
    p = tmp_path_factory.mktemp("claims") / "claims.yaml"
    p.write_text(CLAIMS)
    return p


@pytest.fixture(scope="module")
def front(runs, claims, tmp_path_factory):
    out = tmp_path_factory.mktemp("front") / "rep"
    assert main(["report", *map(str, runs), "--out", str(out), "--prices", str(PRICES), "--claims", str(claims),
                 "--quiet"]) == 0
    return out, (out / "report.md").read_text(), (out / "report.html").read_text()


def _glance(md: str) -> str:
    return md.split("## At a glance")[1].split("\n## ")[0]


def _headline_row(md: str) -> list[str]:
    rows = [line for line in _glance(md).splitlines() if line.startswith("| cpu")]
    assert len(rows) == 1, rows  # both runs ran on this machine: one device
    return [c.strip() for c in rows[0].strip("|").split(" | ")]


def test_verdicts_then_headline_come_first(front):
    _, md, html = front
    order = [md.index(h) for h in ("## Claim verdicts", "## At a glance", "## Runs", "## Device: ", "## Methods")]
    assert order == sorted(order), order
    intro_end = md.index("an energy figure labelled *estimate* was not measured.")
    assert intro_end < order[0]
    assert "**SUPPORTED**" in md.split("## At a glance")[0]
    # the same order in the HTML a browser shows
    assert html.index(">Claim verdicts<") < html.index(">At a glance<") < html.index(">Runs<")


def test_headline_names_the_meter_and_its_figures_match_the_records(runs, front):
    _, md, _ = front
    device, tpj, cost, meter, decode = _headline_row(md)
    # two measured meters: the wider scope (wall) is quoted, and the table says why
    assert meter.startswith("fake-wall (sampled, wall): widest scope of 2 meters (fake-smi, fake-wall)"), meter
    cells = [(run.name, r) for run in runs for r in records(run) if r["status"] == "ok"]
    wall = {(name, r["backend"]): next(m for m in r["energy"]["meters"] if m["meter"] == "fake-wall")
            for name, r in cells}
    # best tokens/J: a trusted figure first, then the highest (3 repetitions: the median is the figure itself)
    (best_key, best_m) = max(wall.items(), key=lambda kv: (kv[1]["quality"] in TRUSTED,
                                                          kv[1]["tokens_per_joule_gross"]))
    shown = float(re.match(r"([\d.,]+) tok/J \[", tpj).group(1).replace(",", ""))
    assert shown == pytest.approx(best_m["tokens_per_joule_gross"], rel=1e-3)
    assert f"{best_key[1]} fp32 [{best_key[0]}]" in tpj
    # cost per 1M tokens, by the formula in workloads/prices.example.yaml, from the raw records
    costs = []
    for name, r in cells:
        T = r["batch"] * r["gen_len"] / statistics.median(r["metrics"]["e2e_s"]["samples"])
        u, m = 0.6, wall[(name, r["backend"])]
        hardware = 9000 / (5 * 365.25 * 86400 * u * T) * 1e6
        energy = (1e6 / m["tokens_per_joule_gross"] + m["idle_w"] * (1e6 / T) * (1 - u) / u) * 1.3 / 3.6e6 * 0.12
        costs.append((hardware + energy, name, r["backend"]))
    total, name, backend = min(costs)
    got = float(re.search(r"= USD ([\d.,]+)", cost).group(1).replace(",", ""))
    assert got == pytest.approx(total, rel=6e-3)  # shown to 3 significant digits
    assert f"{backend} fp32 [{name}]" in cost
    assert re.match(r"[\d.,]+ tok/s \[", decode)


def test_one_central_figure(front):
    """The report shows medians with their intervals, never a mean ± sd beside them."""
    _, md, html = front
    assert not re.search(r"\d ± \d", md) and not re.search(r"\d ± \d", html)
    table = md.split("### Throughput (llama-bench style)")[1].split("\n\n")[1]
    assert table.splitlines()[0].startswith("| model | params | dtype | backend | batch | test | t/s | n |")
    assert all(re.search(r"\| [\d,.]+ \[[\d,.]+, [\d,.]+\]( ~)? \|", line) for line in table.splitlines()[2:])


def test_cost_without_energy_is_incomplete_never_a_total(runs, tmp_path):
    run = tmp_path / "no-meter"
    shutil.copytree(runs[0], run)
    recs = records(run)
    for r in recs:
        r["energy"] = None
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "rep"
    assert main(["report", str(run), "--out", str(out), "--prices", str(PRICES), "--quiet"]) == 0
    md = (out / "report.md").read_text()
    _, tpj, cost, meter, _ = _headline_row(md)
    assert tpj.startswith("none: ") and meter == "none"
    assert re.match(r"USD [\d.]+ \+ energy unknown \(incomplete: hardware only\)", cost), cost
    assert "= USD" not in md  # nowhere a total that leaves out the energy
    procurement = md.split("### Procurement figures")[1].split("###")[0]
    assert procurement.count("+ energy unknown (incomplete: hardware only)") == 2


def test_primary_meter_wins_and_is_named(runs, tmp_path):
    run = tmp_path / "primary"
    shutil.copytree(runs[0], run)
    meta = json.loads((run / "run.json").read_text())
    for m in meta["config"]["meters"]:
        if m.get("name") == "fake-smi":
            m["primary"] = True
    (run / "run.json").write_text(json.dumps(meta))
    out = tmp_path / "rep"
    assert main(["report", str(run), "--out", str(out), "--quiet"]) == 0
    _, tpj, meter, _ = _headline_row((out / "report.md").read_text())
    assert meter == "fake-smi (sampled, cpu-package): marked `primary: true` in the suite"
    smi = [next(m for m in r["energy"]["meters"] if m["meter"] == "fake-smi") for r in records(run)]
    best = max(smi, key=lambda m: (m["quality"] in TRUSTED, m["tokens_per_joule_gross"]))
    assert float(tpj.split(" tok/J")[0].replace(",", "")) == pytest.approx(best["tokens_per_joule_gross"], rel=1e-3)


def test_suite_key_primary_is_checked(tmp_path):
    from tests.two_machine_runs import SUITE

    good = tmp_path / "good.yaml"
    good.write_text(SUITE.replace("scope: wall, name: fake-wall}", "scope: wall, name: fake-wall, primary: true}"))
    assert main(["run", str(good), "--dry-run"]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(SUITE.replace("scope: wall, name: fake-wall}", "scope: wall, name: fake-wall, primary: 3}"))
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(bad), "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert re.search(rf"{re.escape(str(bad))}:\d+: meters\[1\]\.primary: expected true or false, got 3", proc.stderr)


def test_report_print_shows_verdicts_and_headline(runs, claims, tmp_path, capsys):
    assert main(["report", *map(str, runs), "--out", str(tmp_path / "r"), "--prices", str(PRICES),
                 "--claims", str(claims), "--print", "--quiet"]) == 0
    out = capsys.readouterr().out
    i_verdicts, i_head = out.index("claim verdicts"), out.index("at a glance")
    assert i_verdicts < i_head < out.index("Benchmark report: machine-a, machine-b")
    flat = " ".join(out.split())
    assert "SUPPORTED" in flat and "fake-wall" in flat and "widest scope" in flat and "USD" in flat


def test_claim_text_reads_right_for_lower_is_better(front):
    _, md, _ = front
    flat = " ".join(md.split())
    assert ("the time to first token of run=machine-b, backend=onnx-cpu is at most 1/2 of that of "
            "run=machine-a, backend=torch-cpu, i.e. at least 2x lower (lower is better)") in flat
    assert ("run=machine-b, backend=onnx-cpu has at least 0.01x the decode throughput of run=machine-a, "
            "backend=torch-cpu (higher is better)") in flat
    assert "at least 2x the time to first token" not in flat


def test_required_claim_without_data_fails_the_gate(runs, tmp_path, capsys):
    claims = tmp_path / "needs-data.yaml"
    claims.write_text(CLAIMS.replace("batch: 1, prompt_len: 16", "batch: 1, prompt_len: 512", 1))
    code = main(["verify", str(claims), *map(str, runs)])
    out = capsys.readouterr().out
    assert code == 1
    assert ("required claim 'onnx decodes at least 0.01x as fast as torch' matched no data (no measured cell "
            "matches the subject") in " ".join(out.split())
    written = Path(runs[0]) / "verdicts-needs-data.md"
    assert f"wrote {written} (the verdicts as Markdown)" in out and written.exists()
    written.unlink()
    # the same claim not required: reported INCONCLUSIVE, the gate passes
    claims.write_text(claims.read_text().replace("required: true", "required: false"))
    assert main(["verify", str(claims), *map(str, runs), "--markdown", str(tmp_path / "v.md")]) == 0


def test_failure_reason_in_full_and_worker_log_holds_the_traceback(tmp_path_factory, tmp_path):
    """A cell that raises: its whole reason (300 characters) in report.md, its traceback in the log."""
    from tests.test_plugin import faulty, install_plugin, plugin_env, suite_text

    site = install_plugin(tmp_path_factory.getbasetemp())
    reason = "the accelerator runtime refused the graph: " + "operator FusedAttention unsupported; " * 7 + "END"
    assert len(reason) > 250
    suite = tmp_path / "s.yaml"
    suite.write_text(suite_text([faulty("broken", fault="raise", message=reason)]))
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(suite), "--output", str(tmp_path / "res"),
                           "--name", "broken", "--quiet"], cwd=ROOT, env=plugin_env(site), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # every cell failed
    run = tmp_path / "res" / "broken"
    (log,) = [p for p in (run / "logs").glob("*.log")]
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and f"RuntimeError: {reason}" in text
    assert "FAILED cell broken/tiny/fp32/b1/p8/g4/offline" in text
    out = tmp_path / "rep"
    assert main(["report", str(run), "--out", str(out), "--quiet"]) == 0
    md = (out / "report.md").read_text()
    throughput = md.split("### Throughput (llama-bench style)")[1].split("###")[0]
    assert reason in throughput and "| **FAILED** |" in throughput
    assert reason in _glance(md)


def test_a_calibrated_cache_resident_device_is_not_called_uncalibrated():
    """A model whose weights fit the last-level cache has no DRAM roofline: the report says
    so instead of "no calibration" (which sent a reader to calibrate a calibrated host)."""
    import dataclasses

    from harness.cells import load_cells
    from harness.report.cell_summary import cell_summaries
    from harness.report.run_report import _warnings

    cells = load_cells([ROOT / "tests" / "data" / "v1_runs" / "before-smoke-est"])
    resident = {"basis": "calibration cpu on h (decode: cache-resident, 11.0 MiB of weights in a 32 MiB cache: "
                         "no DRAM roofline)", "decode_cache_resident": True, "suspect": False}
    for roof, says, never in ((resident, "cache-resident", "no calibration"),
                              (None, "no calibration for this device", "cache-resident")):
        cs = [dataclasses.replace(c, record=dataclasses.replace(c.record, roofline=roof)) for c in cells]
        text = " ".join(_warnings(cs, cell_summaries(cs)))
        assert says in text and never not in text
        if roof:
            assert f"{sum(c.ok for c in cs)} cell(s) cache-resident" in text
