"""The fuzzer's regression corpus and a smoke run of the fuzzer itself (issue 14).

tests/data/fuzz_corpus/<case>/case.json holds cases the fuzzer (scripts/fuzz_inputs.py) found
crashing, hanging or silently wrong, in its replay format; each must now be refused cleanly:
exit 2, one `error:` line naming the file and line. They run through the fuzzer's own fork
server (a real child process per case, the real CLI), like `--replay` does.
"""
from __future__ import annotations

import json
from pathlib import Path
import subprocess
import sys
import time

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "data" / "fuzz_corpus"
sys.path.insert(0, str(ROOT / "scripts"))

import fuzz_inputs as fz  # noqa: E402

CASES = sorted(p.parent.name for p in CORPUS.glob("*/case.json"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    fz.preimport()
    return fz.ForkServer(tmp_path_factory.mktemp("fuzz-work"))


@pytest.mark.parametrize("name", CASES)
def test_corpus_case_is_refused_cleanly(server, tmp_path, name):
    case = fz.Case.from_json(json.loads((CORPUS / name / "case.json").read_text()))
    expect = case.extra["expect"]
    r = server.run_one(case, tmp_path / name)
    assert r.outcome == expect["outcome"], (r.outcome, r.detail, r.stderr[-2000:])
    assert expect["stderr_contains"] in r.stderr, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.seconds < fz.TIMEOUT_S


def test_corpus_is_not_empty():
    assert len(CASES) >= 8


# --- the classifier: each failing outcome is reachable ------------------------------------------

def _case(**kw) -> fz.Case:
    return fz.Case("suites", 0, "test", subjects=["suite.yaml"], **kw)


@pytest.mark.parametrize("rc, err, outcome", [
    (2, "error: suite.yaml:3: backends[0].type: expected a registered backend\n", "clean"),
    (2, "error: 2 problems:\nsuite.yaml:3: seed: expected int\nsuite.yaml:4: name: expected str\n", "clean"),
    (2, "error: something is wrong\n", "unlocated"),  # names no file
    (2, "error: suite.yaml is bad\n", "unlocated"),  # a file, but no line, record or key
    (2, "error: suite.yaml:1: x\nerror: suite.yaml:2: y\n", "unlocated"),  # two error blocks
    (2, "", "unlocated"),
    (1, "Traceback (most recent call last):\n  File ...\nKeyError: 'x'\n", "traceback"),
    (2, "Traceback (most recent call last):\nValueError\nerror: suite.yaml:1: x\n", "traceback"),
    (0, "", "accepted"),
    (1, "", "other"),  # exit 1 where the command has no such rule
    (-9, "", "other"),
])
def test_classification(tmp_path, rc, err, outcome):
    got, _ = fz.classify(_case(), rc, "", err, False, tmp_path, {})
    assert got == outcome


def test_a_victim_written_through_a_symlink_is_a_failure(tmp_path):
    case = _case(victims={"victim.txt": "precious\n"})
    (tmp_path / "victim.txt").write_text("overwritten")
    assert fz.classify(case, 0, "", "", False, tmp_path, {})[0] == "other"
    (tmp_path / "victim.txt").write_text("precious\n")
    assert fz.classify(case, 0, "", "", False, tmp_path, {})[0] == "accepted"


def test_a_resume_that_drops_or_repeats_a_cell_is_a_failure(tmp_path):
    ok = lambda cid: json.dumps({"cell_id": cid, "status": "ok"}).encode() + b"\n"  # noqa: E731
    old = ok("a") + ok("b")
    (tmp_path / "results.jsonl").write_bytes(ok("a") + ok("c"))
    assert "lost" in fz.resume_problem(old, tmp_path)
    (tmp_path / "results.jsonl").write_bytes(old + ok("b"))
    assert "again" in fz.resume_problem(old, tmp_path)
    (tmp_path / "results.jsonl").write_bytes(old + ok("c"))
    assert fz.resume_problem(old, tmp_path) is None


def test_a_child_past_its_time_is_killed_and_counted_as_a_hang(server, tmp_path, monkeypatch):
    monkeypatch.setattr(fz, "child_main", lambda case: time.sleep(60))
    case = fz.Case("cli", 0, "sleeps", extra={"timeout": 1.0})
    t0 = time.time()
    got = []
    server.run_many([case], got.append)
    assert time.time() - t0 < 20
    assert got[0].outcome == "hang"


# --- the fuzzer end to end, small --------------------------------------------------------------

def test_smoke_run_of_the_fuzzer(tmp_path):
    """~40 generated cases over six families (no real runs), through the script's own command
    line: they finish in well under a minute and the harness gives no traceback, hang or
    unlocated rejection on any of them."""
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "scripts" / "fuzz_inputs.py"), "--cases", "40", "--seed", "7",
           "--no-real-runs", "--base-run", str(ROOT / "tests" / "data" / "v1_runs" / "before-server"),
           "--out", str(out), "--work", str(tmp_path / "work")]
    for f in ("suites", "claims", "prices", "results", "meterlogs", "http"):
        cmd += ["--family", f]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    took = time.time() - t0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["total"]["cases"] >= 35, summary
    assert set(summary["families"]) == {"suites", "claims", "prices", "results", "meterlogs", "http"}
    assert p.returncode == 0, (p.stdout[-3000:], summary["failures"])
    assert summary["total"]["clean"] + summary["total"]["accepted"] == summary["total"]["cases"]
    assert summary["total"]["clean"] > 0 and summary["total"]["accepted"] > 0
    md = (out / "summary.md").read_text()
    assert "| family | cases | clean | accepted | traceback | hang | unlocated | other |" in md
    assert took < 120, took  # ~20 s on an idle 2-core machine
