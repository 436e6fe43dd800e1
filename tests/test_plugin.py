"""A backend shipped as its own pip package is found through the `harness.backends`
entry-point group and runs like a built-in one.

The package is tests/plugins/faulty_backend, installed for real (pip, into a temporary
folder put on PYTHONPATH) once per test session. The helpers here are shared with
tests/test_resilience.py, which uses the same plugin to inject faults.
"""
from __future__ import annotations

import os
from pathlib import Path
import shutil
import subprocess
import sys

import pytest
import yaml

from harness.records import CellRecord
from harness.results import load_run, read_records

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_SRC = ROOT / "tests" / "plugins" / "faulty_backend"


def install_plugin(base: Path) -> Path:
    """pip-install the faulty backend into base/faulty-plugin-site (once) and return that folder."""
    site = base / "faulty-plugin-site"
    if (site / "faulty_backend" / "__init__.py").exists():
        return site
    # Build from a copy: pip's in-tree build would leave build/ and *.egg-info in the repo.
    src = base / "faulty-plugin-src"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(PLUGIN_SRC, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    staging = base / "faulty-plugin-staging"
    shutil.rmtree(staging, ignore_errors=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                           "--disable-pip-version-check", "--no-input", "--quiet", "--target", str(staging), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"pip install of the test plugin failed:\n{proc.stdout}\n{proc.stderr}"
    os.replace(staging, site)
    return site


@pytest.fixture(scope="session")
def faulty_plugin(tmp_path_factory) -> Path:
    """Folder holding the installed plugin (faulty_backend + its dist-info)."""
    return install_plugin(tmp_path_factory.getbasetemp())


def plugin_env(site: Path, **extra: str) -> dict:
    """Environment for `python -m harness` that sees the installed plugin (and this source tree)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]), OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def harness(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)


def harness_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "harness", *args]


def suite_text(backends: list[dict], batch_sizes=(1,), name: str = "t", timeout_s: float = 120, **top) -> str:
    """A small, fast suite: tiny model, no warm-up, one repetition, energy off."""
    suite = {"name": name, "warmup": 0, "repetitions": 1, "timeout_s": timeout_s,
             "backends": backends,
             "workloads": [{"model": "tiny", "dtypes": ["fp32"], "batch_sizes": list(batch_sizes),
                            "prompt_lens": [8], "gen_lens": [4]}],
             "energy": {"enabled": False}}
    suite.update(top)
    return yaml.safe_dump(suite, sort_keys=False)


def faulty(name: str, **options) -> dict:
    return {"type": "faulty", "name": name, "options": options}


def torch_cpu(name: str = "torch-ok") -> dict:
    return {"type": "torch", "name": name, "options": {"device": "cpu", "threads": 1}}


def check_results(run_dir: Path, complete: bool = True) -> dict[str, CellRecord]:
    """Every line of results.jsonl is a whole record, no cell has two, and (complete)
    every cell of the plan has one. Returns cell_id -> record."""
    meta, latest = load_run(run_dir)
    raw = read_records(run_dir / "results.jsonl")
    ids = [r.cell_id for r in raw]
    assert len(ids) == len(set(ids)), f"duplicated records: {sorted(i for i in ids if ids.count(i) > 1)}"
    assert len(latest) == len(raw)
    assert set(ids) <= set(meta["cells"])
    if complete:
        assert set(ids) == set(meta["cells"]), f"cells without a record: {sorted(set(meta['cells']) - set(ids))}"
    return {r.cell_id: r for r in raw}


def test_plugin_is_listed_and_runs_like_a_builtin(faulty_plugin, tmp_path):
    env = plugin_env(faulty_plugin)
    listing = harness("list", env=env)
    assert listing.returncode == 0, listing.stderr
    line = next((l for l in listing.stdout.splitlines() if l.split()[:1] == ["faulty"]), None)
    assert line and "faulty_backend:FaultyBackend" in line and "fp32" in line, listing.stdout

    (tmp_path / "s.yaml").write_text(suite_text([faulty("plug", fault="none")], batch_sizes=[1, 2]))
    proc = harness("run", str(tmp_path / "s.yaml"), "--output", str(tmp_path / "out"), "--name", "p", "--quiet",
                   env=env)
    assert proc.returncode == 0, proc.stderr
    records = check_results(tmp_path / "out" / "p")
    assert len(records) == 2
    for r in records.values():
        assert r.status == "ok" and r.valid is True, r.error
        assert r.backend_type == "faulty" and r.backend == "plug" and r.device == "cpu"
        assert r.describe["backend"] == "faulty" and r.describe["fault"] == "none"
        assert r.metrics["decode_tps"]["median"] > 0
        assert r.accuracy["passed"] is True


def test_plugin_options_are_validated_like_a_builtins(faulty_plugin, tmp_path):
    (tmp_path / "s.yaml").write_text(suite_text([faulty("plug", fault="segfalt", fault_on_batsh=2)]))
    proc = harness("run", str(tmp_path / "s.yaml"), "--output", str(tmp_path / "out"), env=plugin_env(faulty_plugin))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "backends[0].options.fault: expected one of none, segfault" in proc.stderr
    assert "backends[0].options.fault_on_batsh: unknown key (did you mean 'fault_on_batch'?)" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_without_the_plugin_the_suite_names_the_missing_backend(tmp_path):
    (tmp_path / "s.yaml").write_text(suite_text([faulty("plug")]))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = harness("run", str(tmp_path / "s.yaml"), "--output", str(tmp_path / "out"), env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "backends[0].type: unknown backend 'faulty'" in proc.stderr
