"""`harness seal` / `harness check` (issue 17) on a real run folder: one tiny torch run made
once by `harness run` (a subprocess, real worker), copied per test and then sealed,
signed, tampered with."""
import hashlib
import json
import os
from pathlib import Path
import shutil
import subprocess
import sys

import pytest

from harness.results import load_run
from harness.seal import check, run_status, seal

SUITE = """\
name: sealed
lab: lab-a
warmup: 1
repetitions: 2
backends:
  - type: torch
    name: torch-cpu
    options: {device: cpu, threads: 1}
workloads:
  - model: tiny
    dtypes: [fp32]
    batch_sizes: [1]
    prompt_lens: [16]
    gen_lens: [8]
meters:
  - {type: estimate, watts: 50, scope: cpu-package, source: test}
energy: {idle_s: 0.2, min_window_s: 0.2}
"""


def cli(*args):
    return subprocess.run([sys.executable, "-m", "harness.seal_cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def made_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sealrun")
    (tmp / "suite.yaml").write_text(SUITE)
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(tmp / "suite.yaml"), "--output",
                           str(tmp / "out"), "--name", "r1", "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    keys = tmp / "keys"
    assert cli("seal", "--new-key", keys).returncode == 0
    other = tmp / "other"
    assert cli("seal", "--new-key", other).returncode == 0
    return tmp / "out" / "r1", keys, other


@pytest.fixture
def run(made_run, tmp_path):
    """A fresh copy of the run folder (links copied as links), and the two key pairs."""
    src, keys, other = made_run
    dst = tmp_path / "r1"
    shutil.copytree(src, dst, symlinks=True)
    return dst, keys, other


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rewrite_records(run_dir: Path, change) -> None:
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    out = []
    for line in lines:
        rec = json.loads(line)
        change(rec)
        out.append(json.dumps(rec))
    (run_dir / "results.jsonl").write_text("\n".join(out) + "\n")


def test_seal_then_check_passes_with_the_signers_key(run):
    run_dir, keys, _ = run
    proc = cli("seal", run_dir, "--key", keys / "harness-ed25519.pem")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((run_dir / "manifest.json").read_text())
    # every file of the folder, by its digest computed here
    on_disk = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
                     if p.is_file() and p.name not in ("manifest.json", "manifest.sig"))
    assert sorted(manifest["files"]) == on_disk and "results.jsonl" in on_disk and "suite.yaml" in on_disk
    for rel in on_disk:
        assert manifest["files"][rel]["sha256"] == sha256(run_dir / rel)
    meta = json.loads((run_dir / "run.json").read_text())
    config = {k: v for k, v in meta["config"].items() if k not in ("lab", "output")}
    assert manifest["suite_fingerprint"] == hashlib.sha256(
        json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert manifest["lab"] == "lab-a" and meta["config"]["lab"] == "lab-a"
    assert manifest["nodes"] == [meta["inventory"]] and manifest["harness_version"] == meta["harness_version"]
    assert manifest["git_commit"] == meta["inventory"]["git_commit"]
    proc = cli("check", run_dir, "--pubkey", keys / "harness-ed25519.pub.pem")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS" in proc.stdout and "signature verified" in proc.stdout
    status = run_status(run_dir)
    assert (status.status, status.lab, status.trusted) == ("sealed+PASS", "lab-a", True)
    assert status.nodes == [meta["inventory"]["hostname"]]
    # harness report / verify write their outputs into the run folder: not sealed, so the seal holds
    (run_dir / "report").mkdir()
    (run_dir / "report" / "report.md").write_text("# report\n")
    (run_dir / "verdicts-claims.md").write_text("verdicts\n")
    assert check(run_dir).passed


def test_each_tampering_is_named(run):
    run_dir, _, _ = run
    assert cli("seal", run_dir).returncode == 0
    base = run_dir.parent
    copies = {}
    for what in ("edit", "add", "delete"):
        copies[what] = base / what
        shutil.copytree(run_dir, copies[what], symlinks=True)
    # one byte of results.jsonl: a digit of the cell's wall time (still a valid record)
    data = (copies["edit"] / "results.jsonl").read_bytes()
    at = data.index(b'"wall_s": ') + len(b'"wall_s": ') + 2
    digit = data[at:at + 1]
    assert digit.isdigit()
    (copies["edit"] / "results.jsonl").write_bytes(data[:at] + (b"1" if digit != b"1" else b"2") + data[at + 1:])
    (copies["add"] / "logs" / "notes.txt").write_text("added later\n")
    (copies["delete"] / "logs" / "torch-cpu_tiny_fp32.log").unlink()
    expected = {"edit": "results.jsonl: edited after sealing", "add": "logs/notes.txt: added after sealing",
                "delete": "logs/torch-cpu_tiny_fp32.log: removed after sealing"}
    for what, line in expected.items():
        proc = cli("check", copies[what])
        assert proc.returncode == 1, (what, proc.stdout, proc.stderr)
        assert "FAIL" in proc.stdout and line in proc.stdout.splitlines()[1], (what, proc.stdout)
        assert "PASS" not in proc.stdout and "Traceback" not in proc.stderr
        assert run_status(copies[what]).status == "sealed+FAIL"
    assert cli("check", run_dir).returncode == 0  # the untouched original still passes


def test_wrong_or_missing_signature_fails(run):
    run_dir, keys, other = run
    assert cli("seal", run_dir, "--key", keys / "harness-ed25519.pem").returncode == 0
    proc = cli("check", run_dir, "--pubkey", other / "harness-ed25519.pub.pem")
    assert proc.returncode == 1 and "manifest.sig: the signature does not verify" in proc.stdout
    # a manifest re-written to match an edited file: the digests agree, the signature does not
    rewrite_records(run_dir, lambda r: r["metrics"]["decode_tps"].update(median=1e6))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["files"]["results.jsonl"]["sha256"] = sha256(run_dir / "results.jsonl")
    manifest["files"]["results.jsonl"]["bytes"] = (run_dir / "results.jsonl").stat().st_size
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    assert check(run_dir).passed  # without a key, only the digests are compared
    proc = cli("check", run_dir, "--pubkey", keys / "harness-ed25519.pub.pem")
    assert proc.returncode == 1 and "signature does not verify" in proc.stdout
    (run_dir / "manifest.sig").unlink()
    proc = cli("check", run_dir, "--pubkey", keys / "harness-ed25519.pub.pem")
    assert proc.returncode == 1 and "manifest.sig: missing" in proc.stdout
    proc = cli("check", run_dir)  # no key given: a signed manifest without its signature still fails
    assert proc.returncode == 1 and "manifest.sig: missing, but the manifest names signer sha256:" in proc.stdout


def test_a_planted_symlink_is_refused_and_never_followed(run, tmp_path):
    run_dir, _, _ = run
    outside = tmp_path / "outside.jsonl"
    shutil.copy(run_dir / "results.jsonl", outside)
    os.symlink("/etc/hostname", run_dir / "logs" / "evil.log")
    proc = cli("seal", run_dir)
    assert proc.returncode == 2 and "logs/evil.log: is a symbolic link" in proc.stderr
    assert not (run_dir / "manifest.json").exists()
    (run_dir / "logs" / "evil.log").unlink()
    assert cli("seal", run_dir).returncode == 0
    # after sealing: results.jsonl swapped for a link to an identical file elsewhere
    (run_dir / "results.jsonl").unlink()
    os.symlink(outside, run_dir / "results.jsonl")
    proc = cli("check", run_dir)
    assert proc.returncode == 1
    assert "results.jsonl: is a symbolic link; not followed" in proc.stdout
    assert "results.jsonl: removed after sealing" in proc.stdout


def test_a_record_without_energy_provenance_fails(run):
    run_dir, _, _ = run

    def strip(rec):
        for m in rec["energy"]["meters"]:
            m["method"] = None
            m["scope"] = None

    rewrite_records(run_dir, strip)
    seal(run_dir)  # sealed as it is: the manifest holds, the content does not
    res = check(run_dir)
    assert not res.passed
    cid = json.loads((run_dir / "results.jsonl").read_text().splitlines()[0])["cell_id"]
    assert f"results.jsonl: {cid}: energy meter estimate: method None, expected one of counter, sampled, " \
           "external, estimate (provenance)" in res.failures
    assert any(f.startswith(f"results.jsonl: {cid}: energy meter estimate: no scope") for f in res.failures)
    proc = cli("check", run_dir)
    assert proc.returncode == 1 and f"results.jsonl: {cid}: energy meter estimate: method None" in proc.stdout


@pytest.mark.parametrize("change, expect", [
    # energy from another time than the cell's own measurement (spliced in from elsewhere)
    (lambda rec, meta: [w.update(t_start=w["t_start"] - 3600, t_end=w["t_end"] - 3600)
                        for w in rec["energy"]["windows"].values()], "not measured with its timing"),
    (lambda rec, meta: rec["accuracy"].update(passed=None, status="not checked"),
     "status ok without a passed accuracy gate"),
    (lambda rec, meta: meta["config"].update(repetitions=5), "2 repetitions recorded (2 timed samples), the suite "
                                                             "asks for 5"),
    (lambda rec, meta: rec.update(roofline={"decode_pct": 40.0, "basis": "calibration cpu"}),
     "roofline decode % without a calibration of device 'cpu' in run.json"),
    (lambda rec, meta: rec.pop("started_at"), "required field started_at missing"),
])
def test_record_checks(run, change, expect):
    run_dir, _, _ = run
    meta = json.loads((run_dir / "run.json").read_text())
    rewrite_records(run_dir, lambda rec: change(rec, meta))
    (run_dir / "run.json").write_text(json.dumps(meta))
    seal(run_dir)
    res = check(run_dir)
    assert not res.passed and res.sealed
    assert any(expect in f and f.startswith("results.jsonl: torch-cpu/tiny/fp32/b1/p16/g8/offline: ")
               for f in res.failures), res.failures


def test_roofline_with_its_calibration_passes(run):
    run_dir, _, _ = run
    meta = json.loads((run_dir / "run.json").read_text())
    meta["calibration"] = {"cpu": {"device": "cpu", "read_bandwidth_Bps": 2e10, "matmul_flops": {"fp32": 1e11}}}
    (run_dir / "run.json").write_text(json.dumps(meta))
    rewrite_records(run_dir, lambda rec: rec.update(roofline={"decode_pct": 40.0, "prefill_pct": 3.0}))
    seal(run_dir)
    assert check(run_dir).failures == []


def test_unsealed_and_unreadable_input(run, tmp_path):
    run_dir, keys, _ = run
    status = run_status(run_dir)
    assert (status.status, status.lab, status.passed) == ("unsealed", "lab-a", None)
    proc = cli("check", run_dir)
    assert proc.returncode == 1 and "manifest.json: missing: the run is not sealed" in proc.stdout
    proc = cli("check", tmp_path / "nowhere")
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "no such run folder" in proc.stderr
    assert cli("seal", run_dir).returncode == 0
    again = cli("seal", run_dir)
    assert again.returncode == 2 and "already sealed" in again.stderr
    (tmp_path / "junk.pem").write_text("not a key\n")
    proc = cli("check", run_dir, "--pubkey", tmp_path / "junk.pem")
    assert proc.returncode == 2 and "junk.pem: not a PEM public key" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("check", run_dir, "--pubkey", keys / "harness-ed25519.pem")  # the private half
    assert proc.returncode == 2 and "error:" in proc.stderr
    (run_dir / "manifest.json").write_text("{not json")
    proc = cli("check", run_dir)
    assert proc.returncode == 2 and "manifest.json:1: not valid JSON" in proc.stderr
    assert run_status(run_dir).status == "sealed+FAIL"


def test_a_fleet_runs_nodes_are_all_sealed(run):
    run_dir, _, _ = run
    meta = json.loads((run_dir / "run.json").read_text())
    meta["inventory"] = [dict(meta["inventory"], hostname="gpu-node"), dict(meta["inventory"], hostname="npu-node")]
    (run_dir / "run.json").write_text(json.dumps(meta))
    manifest = seal(run_dir)
    assert [n["hostname"] for n in manifest["nodes"]] == ["gpu-node", "npu-node"]
    assert run_status(run_dir).nodes == ["gpu-node", "npu-node"]


def test_lab_is_a_checked_suite_key(tmp_path):
    from harness.config import load_plan
    from harness.schema import ConfigError

    (tmp_path / "s.yaml").write_text(SUITE)
    assert load_plan(tmp_path / "s.yaml").suite.lab == "lab-a"
    (tmp_path / "bad.yaml").write_text(SUITE.replace("lab: lab-a", "lab: [a, b]"))
    with pytest.raises(ConfigError, match="bad.yaml:2: lab"):
        load_plan(tmp_path / "bad.yaml")


def test_records_of_the_made_run_are_what_the_checks_read(made_run):
    # the checks above assume this shape of a real record; if it moves, they must follow
    _, records = load_run(made_run[0])
    (r,) = records
    assert r.ok and r.accuracy["passed"] is True and r.tokens["repetitions"] == 2
    assert {m.method for m in r.energy.meters} == {"estimate"} and r.started_at and r.wall_s
