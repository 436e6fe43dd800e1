"""`harness run --cluster` on a real local Ray cluster (issue 17).

A head and worker nodes are started with `ray start` as separate processes on this
machine, each worker with its own custom resource and name (HARNESS_NODE_NAME), all
under one temp dir. `python -m harness run` runs as a subprocess, as a user runs it.
Every process the cluster starts carries a marker variable in its environment; the
finalizer kills exactly those (never another session's Ray) and checks none is left.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from pathlib import Path
import signal
import subprocess
import sys
import tempfile
import time

import psutil
import pytest
import yaml

from tests.test_plugin import ROOT, faulty_plugin, harness, plugin_env  # noqa: F401

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="ray is not installed (pip install 'accel-harness[fleet]')")
#: `python -m harness` in a process where `import ray` fails, as where the extra is not installed
NO_RAY = "import sys; sys.modules['ray'] = None; from harness.cli import main; sys.exit(main(sys.argv[1:]))"

MARKER = "HARNESS_TEST_CLUSTER"
RAY = str(Path(sys.executable).parent / "ray")


def _cluster_procs(marker: str, node: str | None = None) -> list:
    """The processes of this test's cluster (of one node of it, when node is given)."""
    out = []
    for p in psutil.process_iter():
        try:
            env = p.environ()
        except (psutil.Error, OSError):
            continue
        if env.get(MARKER) == marker and (node is None or env.get("HARNESS_NODE_NAME") == node):
            out.append(p)
    return out


def _cmdline(p) -> str:
    try:
        return " ".join(p.cmdline()) if p.status() != psutil.STATUS_ZOMBIE else ""
    except psutil.Error:
        return ""


def _kill(procs: list) -> None:
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=20)


class Cluster:
    def __init__(self, site: Path):
        # short: Ray's unix socket paths live under it (a 107-byte limit)
        self.dir = tempfile.mkdtemp(prefix="hf", dir="/tmp")
        self.env = plugin_env(site, **{MARKER: self.dir, "RAY_USAGE_STATS_ENABLED": "0",
                                       "RAY_raylet_start_wait_time_s": "120",  # a loaded 2-core machine
                                       # a dead node is noticed within seconds, not Ray's default half a minute,
                                       # with room for a loaded machine's slow answers
                                       "RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "5000",
                                       "RAY_health_check_failure_threshold": "5"})
        self.address = ""

    def _start(self, *args: str, name: str, env: dict | None = None) -> subprocess.Popen:
        return subprocess.Popen([RAY, "start", *args, "--temp-dir", self.dir, "--disable-usage-stats",
                                 "--dashboard-agent-listen-port=0"],
                                env=dict(self.env, HARNESS_NODE_NAME=name, **(env or {})),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    @staticmethod
    def _wait(procs: list[subprocess.Popen]) -> None:
        for proc in procs:
            out, _ = proc.communicate(timeout=180)
            assert proc.returncode == 0, out

    def start_head(self) -> None:
        self._wait([self._start("--head", "--port=0", "--num-cpus=1", "--include-dashboard=false", name="head")])
        self.address = (Path(self.dir) / "ray_current_cluster").read_text().strip()

    def add_nodes(self, nodes: dict[str, dict], labels: dict[str, str] | None = None,
                  env: dict | None = None) -> None:
        """Start worker nodes ({name: resources}, each with `labels` and `env` when given), one
        after another: nodes of one machine started at once can fail to register."""
        extra = ["--labels=" + ",".join(f"{k}={v}" for k, v in labels.items())] if labels else []
        for name, res in nodes.items():
            self._wait([self._start(f"--address={self.address}", "--num-cpus=1", f"--resources={json.dumps(res)}",
                                    *extra, name=name, env=env)])

    def kill_node(self, name: str) -> None:
        procs = _cluster_procs(self.dir, name)
        assert procs, f"no process of node {name}"
        _kill(procs)

    def stop(self) -> None:
        _kill(_cluster_procs(self.dir))
        left = [p.pid for p in _cluster_procs(self.dir)]
        assert not left, f"cluster processes left behind: {left}"


@pytest.fixture(scope="module")
def cluster(faulty_plugin):  # noqa: F811
    c = Cluster(faulty_plugin)
    try:
        c.start_head()
        c.add_nodes({"node-gpu": {"accelerator:gpu": 1}, "node-npu": {"accelerator:npu": 1},
                     "node-doomed": {"accelerator:doomed": 1}})
        yield c
    finally:
        c.stop()


def _suite(tmp: Path, backends: list[dict], **top) -> Path:
    suite = {"name": "fleet", "warmup": 0, "repetitions": 1, "timeout_s": 120, "energy": {"enabled": False},
             "backends": backends,
             "workloads": [{"model": "tiny", "dtypes": ["fp32"], "batch_sizes": [1, 2], "prompt_lens": [8],
                            "gen_lens": [4]}]}
    suite.update(top)
    path = tmp / "s.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def _torch(name: str, resource: str | None = None, **options) -> dict:
    b = {"type": "torch", "name": name, "options": {"device": "cpu", "threads": 1, **options}}
    if resource:
        b["placement"] = {"resources": {resource: 1}}
    return b


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def _run(env: dict, *args: str) -> subprocess.CompletedProcess:
    return harness("run", *args, "--quiet", env=env, timeout=300)


@needs_ray
def test_groups_land_on_the_nodes_their_placement_names(cluster, tmp_path):
    suite = _suite(tmp_path, [_torch("on-gpu", "accelerator:gpu"), _torch("on-npu", "accelerator:npu"),
                              _torch("nowhere", "accelerator:tpu")], max_concurrent_groups=1)
    proc = _run(cluster.env, str(suite), "--output", str(tmp_path / "out"), "--name", "r", "--cluster",
                cluster.address)
    run_dir = tmp_path / "out" / "r"
    assert proc.returncode == 0, proc.stderr
    lines = _lines(run_dir / "results.jsonl")
    ids = [r["cell_id"] for r in lines]
    assert len(ids) == len(set(ids)) == 6
    by_backend: dict[str, list[dict]] = {}
    for r in lines:
        by_backend.setdefault(r["backend"], []).append(r)
    assert {r["node"] for r in by_backend["on-gpu"]} == {"node-gpu"}
    assert {r["node"] for r in by_backend["on-npu"]} == {"node-npu"}
    assert all(r["status"] == "ok" for b in ("on-gpu", "on-npu") for r in by_backend[b])
    # no node has the resource: its cells fail with the reason, the others run
    for r in by_backend["nowhere"]:
        assert r["status"] == "failed" and r["error"]["kind"] == "node-lost" and "node" not in r
        assert "accelerator:tpu" in r["error"]["message"]
    # max_concurrent_groups: 1: one group's cells all end before the next group's start
    spans = sorted((min(r["started_at"] for r in rs), max(r["started_at"] + r["wall_s"] for r in rs))
                   for b, rs in by_backend.items() if b != "nowhere")
    assert spans[0][1] <= spans[1][0]
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "complete" and meta["cluster"]["address"] == cluster.address
    assert set(meta["nodes"]) == {"node-gpu", "node-npu"}
    ray_ids = {meta["nodes"][n]["ray_node_id"] for n in meta["nodes"]}
    assert len(ray_ids) == 2 and all(meta["nodes"][n]["cpu"]["logical_cores"] for n in meta["nodes"])
    # each group's worker log came back to the head's run folder
    assert {p.name for p in (run_dir / "logs").glob("*.log")} >= {"on-gpu_tiny_fp32.log", "on-npu_tiny_fp32.log"}


@needs_ray
def test_a_node_killed_mid_run_fails_its_cells_and_resume_completes(cluster, tmp_path):
    slow = {"type": "faulty", "name": "slow", "options": {"sleep_s": 1.0},
            "placement": {"resources": {"accelerator:doomed": 1}}}
    suite = _suite(tmp_path, [slow, _torch("on-gpu", "accelerator:gpu")], max_concurrent_groups=2)
    doc = yaml.safe_load(suite.read_text())
    doc["workloads"][0]["batch_sizes"] = [1, 2, 3]
    suite.write_text(yaml.safe_dump(doc, sort_keys=False))
    run_dir = tmp_path / "out" / "k"
    err = open(tmp_path / "err.txt", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(suite), "--output", str(tmp_path / "out"),
                             "--name", "k", "--quiet", "--cluster", cluster.address], env=cluster.env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the slow group's first cell is in: the node is mid-group
            results = run_dir / "results.jsonl"
            if results.exists() and any(r["backend"] == "slow" for r in _lines(results)):
                break
            assert proc.poll() is None, (tmp_path / "err.txt").read_text()
            time.sleep(0.2)
        else:
            pytest.fail("the slow group never recorded a cell")
        cluster.kill_node("node-doomed")
        assert proc.wait(timeout=120) == 0, (tmp_path / "err.txt").read_text()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
        err.close()
    first = _lines(run_dir / "results.jsonl")
    slow_recs = [r for r in first if r["backend"] == "slow"]
    lost = [r for r in slow_recs if r["status"] == "failed"]
    assert len(slow_recs) == 3 and lost and any(r["status"] == "ok" for r in slow_recs)
    assert all(r["error"]["kind"] == "node-lost" and "node-doomed" in r["error"]["message"] for r in lost)
    assert all(r["status"] == "ok" and r["node"] == "node-gpu" for r in first if r["backend"] == "on-gpu")
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"

    # a node with the resource comes back; a plain --resume runs the lost cells there
    cluster.add_nodes({"node-doomed-2": {"accelerator:doomed": 1}})
    proc2 = _run(cluster.env, "--resume", str(run_dir), "--cluster", cluster.address)
    assert proc2.returncode == 0, proc2.stderr
    assert "lost with a cluster node run again" in proc2.stderr
    final = _lines(run_dir / "results.jsonl")
    ids = [r["cell_id"] for r in final]
    assert len(ids) == len(set(ids)) == 6, "one record per cell"
    assert all(r["status"] == "ok" for r in final)
    assert {r["node"] for r in final if r["cell_id"] in {x["cell_id"] for x in lost}} == {"node-doomed-2"}
    moved = _lines(run_dir / "results.superseded.jsonl")
    assert sorted(r["cell_id"] for r in moved) == sorted(r["cell_id"] for r in lost)


@needs_ray
def test_node_labels_place_groups_and_a_node_on_another_version_is_flagged(cluster, tmp_path):
    """A node started with `ray start --labels` takes the group whose `placement: {node_label:}`
    names its label. Its Python finds another accel-harness release first on its path (a
    node upgraded apart from the head): run.json records it, the run warns, check fails."""
    newer = tmp_path / "newer"
    (newer / "accel_harness-9.9.9.dist-info").mkdir(parents=True)
    (newer / "accel_harness-9.9.9.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: accel-harness\nVersion: 9.9.9\n")
    cluster.add_nodes({"node-labelled": {}}, labels={"lab.example/chip": "tpu-x"},
                      env={"PYTHONPATH": f"{newer}:{cluster.env['PYTHONPATH']}"})
    labelled = _torch("labelled")
    labelled["placement"] = {"node_label": {"lab.example/chip": "tpu-x"}}
    absent = _torch("absent")
    absent["placement"] = {"node_label": {"lab.example/chip": "in(npu-y, npu-z)"}}
    suite = _suite(tmp_path, [labelled, absent])
    # not from the source tree: Ray puts the driver's working directory first on its workers'
    # path, and the tree's egg-info would then name the head's release on every node
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(suite), "--output", str(tmp_path / "out"),
                           "--name", "l", "--quiet", "--cluster", cluster.address], env=cluster.env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    run_dir = tmp_path / "out" / "l"
    lines = _lines(run_dir / "results.jsonl")
    assert {(r["backend"], r["status"], r.get("node")) for r in lines} == {("labelled", "ok", "node-labelled"),
                                                                         ("absent", "failed", None)}
    assert all("in(npu-y, npu-z)" in r["error"]["message"] for r in lines if r["backend"] == "absent")
    meta = json.loads((run_dir / "run.json").read_text())
    head = importlib.metadata.version("accel-harness")
    assert meta["harness_version"] == head
    drift = [f"harness 9.9.9 (head: {head})"]
    assert meta["nodes"]["node-labelled"]["version_drift"] == drift
    assert f"warning: node node-labelled runs another version than the head: {drift[0]}" in proc.stderr
    assert harness("seal", str(run_dir)).returncode == 0
    checked = harness("check", str(run_dir))
    assert checked.returncode == 1 and checked.stdout.splitlines()[1:] == [
        f"run.json: node node-labelled runs another version than the head: {drift[0]}"], checked.stdout


def test_node_label_is_validated_with_file_line_and_key(tmp_path):
    bad = _torch("x")
    bad["placement"] = {"node_label": {"chip": 1, "bad key!": "a", "ok": "in(a,"}}
    suite = _suite(tmp_path, [bad])
    proc = harness("run", str(suite), "--dry-run")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    line = next(i for i, l in enumerate(suite.read_text().splitlines(), 1) if "chip" in l)
    assert f"s.yaml:{line}: backends[0].placement.node_label.chip: expected a label value" in proc.stderr
    assert "backends[0].placement.node_label: expected label names" in proc.stderr and "'bad key!'" in proc.stderr
    assert "backends[0].placement.node_label.ok: expected a label value" in proc.stderr


def test_placement_is_validated_with_file_line_and_key(tmp_path):
    suite = _suite(tmp_path, [{"type": "torch", "name": "x", "options": {"device": "cpu"},
                               "placement": {"resources": {"accelerator:rngd": -1}}}], max_concurrent_groups=0)
    proc = harness("run", str(suite), "--dry-run")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:") or "s.yaml:" in l]
    assert any("backends[0].placement.resources.accelerator:rngd" in l and "above 0" in l for l in errors), proc.stderr
    assert any("max_concurrent_groups" in l and "from 1" in l for l in errors), proc.stderr


def test_without_ray_a_local_run_runs_and_cluster_says_what_to_install(tmp_path):
    """Nothing imports ray unless a cluster is named; naming one without ray is one error line."""
    suite = _suite(tmp_path, [_torch("local", "accelerator:gpu")])  # placement is ignored off a cluster
    doc = yaml.safe_load(suite.read_text())
    doc["workloads"][0]["batch_sizes"] = [1]
    suite.write_text(yaml.safe_dump(doc, sort_keys=False))
    base = [sys.executable, "-c", NO_RAY, "run", str(suite), "--output", str(tmp_path / "out"), "--quiet"]
    local = subprocess.run([*base, "--name", "local"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert local.returncode == 0, local.stderr
    (rec,) = _lines(tmp_path / "out" / "local" / "results.jsonl")
    assert rec["status"] == "ok" and "node" not in rec
    remote = subprocess.run([*base, "--name", "remote", "--cluster", "127.0.0.1:1"], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    errors = [l for l in remote.stderr.splitlines() if l.startswith("error:")]
    assert remote.returncode == 2 and "Traceback" not in remote.stderr, remote.stderr
    assert len(errors) == 1 and "accel-harness[fleet]" in errors[0]


@needs_ray
def test_ctrl_c_cancels_the_work_on_every_node(cluster, tmp_path):
    slow = {"type": "faulty", "name": "slow", "options": {"sleep_s": 1.0},
            "placement": {"resources": {"accelerator:gpu": 1}}}
    suite = _suite(tmp_path, [slow])
    doc = yaml.safe_load(suite.read_text())
    doc["workloads"][0]["batch_sizes"] = [1, 2, 3, 4, 5, 6]
    suite.write_text(yaml.safe_dump(doc, sort_keys=False))
    run_dir = tmp_path / "out" / "c"
    with open(tmp_path / "err.txt", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(suite), "--output", str(tmp_path / "out"),
                                 "--name", "c", "--quiet", "--cluster", cluster.address], env=cluster.env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 120
        while not ((run_dir / "results.jsonl").exists() and (run_dir / "results.jsonl").stat().st_size):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "err.txt").read_text()
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130, (tmp_path / "err.txt").read_text()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    # the node's harness worker (a child of the cancelled Ray task) is gone
    deadline = time.monotonic() + 30
    while any("harness.worker" in _cmdline(p) for p in _cluster_procs(cluster.dir, "node-gpu")):
        assert time.monotonic() < deadline, "a harness worker outlived Ctrl-C"
        time.sleep(0.2)
    assert len(_lines(run_dir / "results.jsonl")) < 6


@needs_ray
def test_a_head_nobody_answers_at_is_one_error_line(tmp_path):
    suite = _suite(tmp_path, [_torch("x")])
    t0 = time.monotonic()
    proc = harness("run", str(suite), "--output", str(tmp_path / "out"), "--quiet", "--cluster", "127.0.0.1:1")
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr
    assert "127.0.0.1:1" in errors[0] and time.monotonic() - t0 < 120  # not Ray's own ten-minute retry
