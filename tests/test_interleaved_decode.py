"""scripts/interleaved_decode.py through a real process: two onnxruntime backends of a suite,
timed in turns; its table, its ratios, and its refusals of names the suite lacks."""
from __future__ import annotations

from pathlib import Path
import re
import subprocess
import sys

import pytest

pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "interleaved_decode.py"

SUITE = """\
name: turns
backends:
  - type: onnxruntime
    name: portable
    options: {intra_op_threads: 2, cache_dir: CACHE}
  - type: onnxruntime
    name: fused
    options: {intra_op_threads: 2, graph: fused, cache_dir: CACHE}
workloads:
  - model: tiny
    dtypes: [fp32]
    batch_sizes: [1]
    prompt_lens: [8]
    gen_lens: [4]
"""


@pytest.fixture()
def suite(tmp_path, tmp_path_factory) -> Path:
    p = tmp_path / "turns.yaml"
    p.write_text(SUITE.replace("CACHE", str(tmp_path_factory.getbasetemp() / "onnx-cache")))
    return p


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)


def test_two_backends_in_turns_give_a_row_each_and_a_ratio(suite):
    p = _run(suite, "--baseline", "portable", "--batch", "1", "2", "--prompt", "8", "--gen", "6", "--rounds", "3")
    assert p.returncode == 0, p.stderr
    rows = [r for r in p.stdout.splitlines() if r.startswith("| portable") or r.startswith("| fused")]
    assert len(rows) == 4  # two backends x two batch sizes
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[2]) > 0  # tok/s median
        lo, hi = (float(x) for x in cells[3].split(" - "))
        assert 0 < lo <= float(cells[2]) <= hi
        if cells[0] == "portable":
            assert cells[4] == ""  # the baseline has no ratio to itself
        else:
            m = re.fullmatch(r"([\d.]+)x \[([\d.]+), ([\d.]+)\]", cells[4])
            assert m and float(m[2]) <= float(m[1]) <= float(m[3])
    assert "round 3/3" in p.stderr  # progress goes to stderr, the table to stdout


def test_a_backend_the_suite_lacks_is_named(suite):
    p = _run(suite, "--backends", "fused", "nosuch", "--rounds", "1")
    assert p.returncode == 2 and "nosuch" in p.stderr and "portable" in p.stderr and "Traceback" not in p.stderr
    p = _run(suite, "--backends", "fused", "--baseline", "portable", "--rounds", "1")
    assert p.returncode == 2 and "--baseline portable" in p.stderr
