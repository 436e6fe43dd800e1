"""Issue 20 item 8: failures every cell would meet in its worker are validation errors,
said before anything runs (exit 2, file:line: key), through the real CLI."""
from __future__ import annotations

from pathlib import Path
import subprocess
import sys

import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
MISSING = next(p for p in ("CUDAExecutionProvider", "OpenVINOExecutionProvider", "QNNExecutionProvider")
               if p not in ort.get_available_providers())


def _dry_run(tmp_path, backends: str) -> subprocess.CompletedProcess:
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"name: pre\nbackends:\n{backends}workloads:\n  - model: tiny\n")
    return subprocess.run([sys.executable, "-m", "harness", "run", str(suite), "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_missing_onnx_provider_is_a_validation_error(tmp_path):
    r = _dry_run(tmp_path, f"  - type: onnxruntime\n    options: {{providers: [{MISSING}]}}\n")
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"suite.yaml:4: backends[0].options.providers: execution provider {MISSING}" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_missing_provider_on_an_optional_backend_is_skipped_with_a_note(tmp_path):
    r = _dry_run(tmp_path, f"  - type: onnxruntime\n    optional: true\n    options: {{providers: [{MISSING}]}}\n"
                           "  - type: torch\n    name: t\n")
    assert r.returncode == 0, r.stderr
    assert "optional backend skipped" in r.stderr and MISSING in r.stderr
    assert "onnxruntime" not in r.stdout.split("cell")[0].split("\n", 1)[1]  # only torch's cells planned


def test_placed_backend_is_judged_on_its_node(tmp_path):
    """A group placed on a cluster node runs there: the head's providers do not decide."""
    r = _dry_run(tmp_path, f"  - type: onnxruntime\n    options: {{providers: [{MISSING}]}}\n"
                           "    placement: {resources: {\"accelerator:gpu\": 1}}\n")
    assert r.returncode == 0, r.stderr


def test_installed_provider_passes(tmp_path):
    r = _dry_run(tmp_path, "  - type: onnxruntime\n    options: {providers: [CPUExecutionProvider]}\n")
    assert r.returncode == 0, r.stderr
