"""`harness report` and `harness verify` show each run's lab, node(s) and check status, and
mark the figures of unsealed or failing runs in every table (issue 17). One tiny torch run
is made once by `harness run` (a subprocess, real worker); each test copies it, names the
copies as runs of their own, and seals or tampers with them as a lab would."""
import json
from pathlib import Path
import shutil
import subprocess
import sys

import pytest

from harness.report.document import to_markdown
from harness.report.run_report import build_report
from harness.seal import check, seal
from tests.test_seal import SUITE

ROOT = Path(__file__).resolve().parent.parent
LAB = "lab-b"


def harness(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "harness", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


@pytest.fixture(scope="module")
def made_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("labrun")
    (tmp / "suite.yaml").write_text(SUITE)
    # --lab names the lab over the suite's `lab: lab-a`
    proc = harness("run", tmp / "suite.yaml", "--output", tmp / "out", "--name", "r1", "--quiet", "--lab", LAB)
    assert proc.returncode == 0, proc.stderr
    return tmp / "out" / "r1"


def copy_run(src: Path, dst: Path, change=None) -> Path:
    """A copy of the run folder as a run of its own (run.json's run_id is the folder name)."""
    shutil.copytree(src, dst, symlinks=True)
    meta = json.loads((dst / "run.json").read_text())
    meta["run_id"] = dst.name
    if change:
        change(meta)
    (dst / "run.json").write_text(json.dumps(meta))
    return dst


def flip_a_byte(path: Path) -> None:
    """One digit of the cell's wall time: still a valid record, another figure."""
    data = path.read_bytes()
    at = data.index(b'"wall_s": ') + len(b'"wall_s": ') + 2
    assert data[at:at + 1].isdigit()
    path.write_bytes(data[:at] + (b"1" if data[at:at + 1] != b"1" else b"2") + data[at + 1:])


def section(md: str, heading: str) -> list[str]:
    """The table lines of the first section under `heading`."""
    part = md.split(heading, 1)[1]
    lines = []
    for line in part.splitlines()[1:]:
        if line.startswith("#"):
            break
        lines.append(line)
    return [line for line in lines if line.startswith("|")]


def cells_of(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split("|")]


@pytest.fixture
def three_runs(made_run, tmp_path):
    """sealed (passes its check), tampered (sealed, then one byte of results.jsonl edited),
    plain (never sealed)."""
    sealed = copy_run(made_run, tmp_path / "sealed")
    tampered = copy_run(made_run, tmp_path / "tampered")
    plain = copy_run(made_run, tmp_path / "plain")
    seal(sealed)
    seal(tampered)
    flip_a_byte(tampered / "results.jsonl")
    assert check(sealed).passed and not check(tampered).passed
    return sealed, tampered, plain


def test_report_shows_lab_nodes_and_check_status_and_marks_untrusted_runs(three_runs):
    sealed, tampered, plain = three_runs
    host = json.loads((sealed / "run.json").read_text())["inventory"]["hostname"]
    md = to_markdown(build_report([sealed, tampered, plain], with_plots=False))

    runs = section(md, "## Runs")
    header = cells_of(runs[0])
    rows = {cells_of(r)[0]: dict(zip(header, cells_of(r))) for r in runs[2:]}
    assert set(rows) == {"sealed", "tampered ‡", "plain †"}
    for name, row in rows.items():
        assert (row["lab"], row["node(s)"]) == (LAB, host), name
    assert rows["sealed"]["check"] == "sealed+PASS"
    assert rows["plain †"]["check"] == "unsealed"
    assert rows["tampered ‡"]["check"].startswith("sealed+FAIL: results.jsonl: edited after sealing")
    # the legend says what each mark means, once, under the runs table
    legend = next(line for line in md.split("## Runs", 1)[1].splitlines() if "† unsealed run" in line)
    assert "‡ sealed run that fails `harness check`" in legend

    # every table with the runs' figures marks them: the llama-bench table by backend ...
    backends = {cells_of(r)[3] for r in section(md, "### Throughput")[2:]}
    assert backends == {"torch-cpu", "torch-cpu ‡", "torch-cpu †"}
    # ... and the procurement and energy provenance tables by label (run named: three runs of one backend)
    for heading in ("### Procurement figures", "### Energy provenance"):
        labels = {cells_of(r)[0] for r in section(md, heading)[2:]}
        assert labels == {"torch-cpu fp32 [sealed]", "torch-cpu fp32 [tampered] ‡", "torch-cpu fp32 [plain] †"}, \
            heading


def test_a_report_of_sealed_passing_runs_carries_no_mark(three_runs):
    sealed, _, _ = three_runs
    md = to_markdown(build_report([sealed], with_plots=False))
    assert "†" not in md and "‡" not in md
    assert cells_of(section(md, "## Runs")[2])[:5][-1] == "sealed+PASS"


def test_verify_lists_each_runs_lab_nodes_and_status(three_runs, tmp_path):
    sealed, tampered, plain = three_runs
    host = json.loads((sealed / "run.json").read_text())["inventory"]["hostname"]
    claims = tmp_path / "claims.yaml"
    claims.write_text("claims:\n  - name: plain vs sealed\n    metric: decode_tps\n"
                      "    subject: {run: plain}\n    baseline: {run: sealed}\n"
                      "    workload: {model: tiny, batch: 1, prompt_len: 16, gen_len: 8}\n    at_least: 1\n")
    out = tmp_path / "verdicts.md"
    proc = harness("verify", claims, sealed, tampered, plain, "--markdown", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert f"- sealed: lab {LAB}; node(s) {host}; sealed+PASS" in lines
    assert f"- plain †: lab {LAB}; node(s) {host}; unsealed" in lines
    row = next(line for line in lines if line.startswith("- tampered ‡: "))
    assert f"lab {LAB}; node(s) {host}; sealed+FAIL: results.jsonl: edited after sealing" in row
    assert any(line.startswith("† unsealed run") and "‡ sealed run" in line for line in lines)
    text = out.read_text()
    assert "## Runs" in text and f"- plain †: lab {LAB}; node(s) {host}; unsealed" in text


def test_fleet_nodes_and_a_node_on_another_torch_are_shown_and_fail_the_check(made_run, tmp_path):
    """run.json as harness.fleet writes it for a run on two nodes, one of which runs another
    torch than the head: the report names both nodes and flags that one; check fails it."""
    head = json.loads((made_run / "run.json").read_text())
    torch = head["inventory"]["packages"]["torch"]

    def fleet(meta):
        node = dict(meta["inventory"], harness_version=meta["harness_version"])
        meta["nodes"] = {"gpu1": dict(node, node_name="gpu1"),
                         "npu1": dict(node, node_name="npu1", packages=dict(node["packages"], torch="0.0.1"))}
    run = copy_run(made_run, tmp_path / "fleet", fleet)
    manifest = seal(run)  # the head's inventory, then every node's, each under its name
    assert [n.get("node_name") for n in manifest["nodes"]] == [None, "gpu1", "npu1"]
    res = check(run)
    assert not res.passed and res.nodes == ["gpu1", "npu1"]
    assert res.failures == [f"run.json: node npu1 runs another version than the head: torch 0.0.1 (head: {torch})"]
    md = to_markdown(build_report([run], with_plots=False))
    row = dict(zip(cells_of(section(md, "## Runs")[0]), cells_of(section(md, "## Runs")[2])))
    assert row["node(s)"] == f"gpu1, npu1 (VERSIONS DIFFER FROM THE HEAD: torch 0.0.1 (head: {torch}))"
    assert row["run"] == "fleet ‡" and row["check"].startswith("sealed+FAIL: run.json: node npu1")


def test_lab_option_is_recorded_and_checked(made_run, tmp_path):
    meta = json.loads((made_run / "run.json").read_text())
    assert meta["config"]["lab"] == LAB
    (tmp_path / "s.yaml").write_text(SUITE)
    bad = harness("run", tmp_path / "s.yaml", "--output", tmp_path / "out", "--lab", "a\x1b[2Jb")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --lab: expected a printable name"), bad.stderr
    resumed = harness("run", "--resume", made_run, "--lab", "lab-c")
    assert resumed.returncode == 2 and "a resumed run keeps the lab" in resumed.stderr
    assert not (tmp_path / "out").exists()
