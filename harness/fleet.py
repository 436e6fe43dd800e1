"""Run a plan's (backend, model, dtype) groups on a Ray cluster (`harness run --cluster`).

Ray is the engine: each group is one Ray generator task asking for the resources its
backend's `placement:` names, so Ray's scheduler puts a GPU group on a GPU node and an
NPU group on an NPU node, and Ray's object store carries what the task yields back to
the head. On the node the task runs the group exactly as a local run does, through
``harness.runner._run_group``: the same worker process, meters and timeouts, into a
node-local scratch folder. Each record the worker finishes is yielded at once; the head
(this process) alone appends results.jsonl, and writes the group's log and timelines
into the run folder when the task ends.

A node that dies fails the cells its group had not finished (error kind ``node-lost``,
with Ray's reason); a plain ``--resume`` runs them again wherever they fit. Ctrl-C
cancels every task (force: the Ray worker dies, and the harness worker with it, by its
parent-death signal).

Nothing here is imported unless a cluster is named: ``ray`` is the optional [fleet] extra.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import fcntl
import os
from pathlib import Path
import platform
import queue
import re
import shutil
import sys
import tempfile
import threading
import time

from harness.records import CellRecord, PlannedCell, record_from_json
from harness.results import ResultsError, write_json_atomic
from harness.resume import NODE_LOST
from harness.seal import node_drift

#: how long the head waits on its tasks before it looks at its limits again (seconds)
WAIT_S = 0.5
#: a node names itself with this variable (set where `ray start` runs); default: its hostname.
#: Nodes on one machine (a test cluster, containers sharing a hostname) need it to be told apart.
NODE_NAME_ENV = "HARNESS_NODE_NAME"
#: the files of a node's scratch folder that travel back with the group (relative globs)
RETURNED_GLOBS = ("logs/*.log", "timelines/*")


def node_name() -> str:
    return os.environ.get(NODE_NAME_ENV) or platform.node()


# --- node labels (Ray's label selectors) --------------------------------------------------

# Ray's own syntax (ray._private.label_utils, Kubernetes label rules), repeated here so that
# a suite is checked where Ray is not installed: a name or value of at most 63 characters,
# alphanumeric at both ends, `-_.` inside; a key may carry a DNS-subdomain prefix and `/`
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9_.-]{0,61}[a-zA-Z0-9])?"
_LABEL_KEY = re.compile(rf"(?:[a-z0-9](?:[-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_LABEL}")
# a selector value: `value`, `!value` (not), `in(a, b)`, `!in(a, b)`
_LABEL_SELECTOR = re.compile(rf"(!?)(?:in\(({_LABEL}(?:, ?{_LABEL})*)\)|({_LABEL}))")


def label_selector_problems(selector: dict, key: str) -> list[tuple[str, str]]:
    """(key path, what is wrong) for each entry of a `node_label:` selector Ray would refuse."""
    out = []
    for k, v in selector.items():
        if not isinstance(k, str) or not _LABEL_KEY.fullmatch(k):
            out.append((key, f"expected label names such as 'chip' or 'lab.example/chip' (at most 63 characters, "
                             f"letters, digits, '-_.'), got {k!r}"[:300]))
        elif not isinstance(v, str) or not _LABEL_SELECTOR.fullmatch(v):
            out.append((f"{key}.{k}", f"expected a label value ('rngd'), or '!v', 'in(a, b)', '!in(a, b)' "
                                      f"(Ray's label selectors), got {v!r}"[:300]))
    return out


def labels_match(selector: dict, labels: dict) -> bool:
    """Whether a node with `labels` satisfies a `node_label:` selector, as Ray's scheduler
    reads it (a `!` condition also holds where the node lacks the label)."""
    for k, v in selector.items():
        m = _LABEL_SELECTOR.fullmatch(v)
        if m is None:
            return False
        values = [x.strip() for x in m.group(2).split(",")] if m.group(2) else [m.group(3)]
        if (labels.get(k) in values) == bool(m.group(1)):
            return False
    return True


# --- on the node ---------------------------------------------------------------------------

class _Forward:
    """Stands in for runner.Progress on the node: every record _run_group appends to the
    scratch results.jsonl is handed on to the head, with the node's name on it."""

    def __init__(self, out: queue.Queue, node: str):
        self.out, self.node = out, node

    def describe(self, text: str) -> None:
        self.out.put(("describe", text))

    def advance(self, record: CellRecord) -> None:
        record.node = self.node
        self.out.put(("record", record.to_json()))


def _device_lock(node_id: str, device: str) -> int:
    """Block until no other group of this node measures `device`: Ray's resources keep
    groups that ask for a device apart, this keeps apart those that ask for none (two
    CPU groups on one node would share its cores)."""
    folder = Path(tempfile.gettempdir()) / "accel-harness-fleet" / node_id
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / (device.replace("/", "_") + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # released when the task's process ends, kill -9 included
    return fd


def run_group_on_node(plan, group, cells: list[PlannedCell], device: str, output: str):
    """The body of a group's Ray task (a generator): yields ("node", name, inventory,
    calibration) first, then ("describe", text) and ("record", json) as the group runs,
    then ("files", {relative path: bytes}) of its log and timelines."""
    import ray

    from harness import runner
    from harness.calibrate import load_for
    from harness.inventory import inventory

    name = node_name()
    ctx = ray.get_runtime_context()
    node_id = ctx.get_node_id()
    inv = dict(inventory(), ray_node_id=node_id, node_name=name, harness_version=runner._version())
    calibration = load_for(output, device)  # this node's own, for its device
    yield ("node", name, inv, calibration)
    lock = _device_lock(node_id, device)
    scratch = Path(tempfile.mkdtemp(prefix="harness-fleet-"))
    try:
        for sub in ("logs", "timelines"):
            (scratch / sub).mkdir()
        out: queue.Queue = queue.Queue()
        failure: list[BaseException] = []

        def body():
            try:
                runner._run_group(plan, tuple(group), cells, scratch, scratch / "results.jsonl", _Forward(out, name),
                                  device, calibration)
            except BaseException as e:  # noqa: BLE001 - handed to the generator, which raises it to the head
                failure.append(e)
            finally:
                out.put(None)

        # _run_group blocks until its worker ends; the generator must yield meanwhile
        t = threading.Thread(target=body, name="harness-group", daemon=True)
        t.start()
        while (item := out.get()) is not None:
            yield item
        t.join()
        if failure:
            raise failure[0]
        files = {}
        for pattern in RETURNED_GLOBS:
            for p in scratch.glob(pattern):
                if p.is_file() and not p.is_symlink():
                    files[str(p.relative_to(scratch))] = p.read_bytes()
        yield ("files", files)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        os.close(lock)


# --- on the head ---------------------------------------------------------------------------

@dataclass
class _Group:
    key: tuple
    cells: list[PlannedCell]
    device: str
    gen: object = None
    node: str | None = None
    done: set[str] = field(default_factory=set)


def _connect(address: str):
    try:
        import ray
    except ImportError:
        raise ResultsError("--cluster needs Ray: pip install 'accel-harness[fleet]'") from None
    _reachable(address)
    try:
        # the head's own logs stay out of the run's output; the workers' go to their log files
        ray.init(address=address, log_to_driver=False, logging_level="ERROR", configure_logging=True,
                 namespace="accel-harness")
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ResultsError(f"--cluster {address}: cannot connect to a Ray cluster there "
                           f"({(str(e).splitlines() or [''])[0][:300]})") from None
    return ray


def _reachable(address: str, timeout_s: float = 10.0) -> None:
    """Refuse a head nobody answers at within seconds: ray.init itself retries a dead
    address for over ten minutes before it gives up."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if address == "auto" or not host or not port.isdigit():
        return  # `auto`, or a form Ray reads itself: its own error says what is wrong
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ResultsError(f"--cluster {address}: no Ray head answers there ({e.strerror or e})") from None


def _resources(plan, cells: list[PlannedCell]) -> dict:
    b = plan.backend(cells[0].backend)
    p = b.placement
    return {"num_cpus": p.num_cpus if p else 1.0, "resources": dict(p.resources) if p else {},
            "label_selector": dict(p.node_label) if p else {}}


def _feasible(ray, opts: dict) -> str | None:
    """Why no node of the cluster could ever run a task asking for `opts`; None when one can."""
    need = dict(opts["resources"], CPU=opts["num_cpus"])
    for n in ray.nodes():
        if n.get("Alive") and all(n.get("Resources", {}).get(k, 0) >= v for k, v in need.items() if v) \
                and labels_match(opts["label_selector"], n.get("Labels") or {}):
            return None
    labels = f" and the labels {opts['label_selector']}" if opts["label_selector"] else ""
    return f"no live node of the cluster has the resources {need}{labels}"


def run_on_cluster(address: str, plan, groups: dict, run_dir: Path, results_path: Path, progress, devices: dict,
                   meta: dict) -> None:
    """Run `groups` ({(backend, model, dtype): cells}) on the cluster at `address`,
    appending their records to results_path as they arrive; meta (run.json) gains the
    cluster and every node's inventory."""
    from harness.runner import _failed_record, _record

    ray = _connect(address)
    try:
        meta["cluster"] = {"address": address, "ray_version": ray.__version__}
        meta.setdefault("nodes", {})
        task = ray.remote(run_group_on_node)
        limit = plan.suite.max_concurrent_groups or len(groups) or 1
        todo = [_Group(k, cells, devices[cells[0].backend]) for k, cells in groups.items()]
        running: dict = {}
        output = str(Path(plan.suite.output).resolve())

        def lose(g: _Group, why: str) -> None:
            for c in g.cells:
                if c.id not in g.done:
                    _record(results_path, progress, _failed_record(c, NODE_LOST, why, g.device))
                    g.done.add(c.id)

        try:
            while todo or running:
                while todo and len(running) < limit:
                    g = todo.pop(0)
                    opts = _resources(plan, g.cells)
                    why = _feasible(ray, opts)
                    if why:
                        lose(g, why)
                        continue
                    # no retries: a retried group would measure again cells whose records already
                    # arrived; --resume is how lost cells run again
                    labels = {"label_selector": opts["label_selector"]} if opts["label_selector"] else {}
                    g.gen = task.options(num_cpus=opts["num_cpus"], resources=opts["resources"], max_retries=0,
                                         name=f"harness:{'/'.join(g.key)}", **labels).remote(
                        plan, list(g.key), g.cells, g.device, output)
                    running[g.gen] = g
                ready, _ = ray.wait(list(running), num_returns=1, timeout=WAIT_S)
                for gen in ready:
                    g = running[gen]
                    try:
                        item = ray.get(next(gen))
                    except StopIteration:
                        del running[gen]
                        lose(g, f"the group's task on node {g.node} ended without these cells' records")
                        continue
                    except ray.exceptions.RayError as e:
                        del running[gen]
                        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:400]
                        lose(g, f"node {g.node or '(not started)'} lost during the group: {type(e).__name__}: {first}")
                        continue
                    _take(item, g, run_dir, results_path, progress, meta)
        except KeyboardInterrupt:
            for gen in running:
                ray.cancel(gen, force=True)
            raise
    finally:
        ray.shutdown()


def _take(item: tuple, g: _Group, run_dir: Path, results_path: Path, progress, meta: dict) -> None:
    from harness.runner import _record

    kind = item[0]
    if kind == "node":
        _, g.node, inv, calibration = item
        known = meta["nodes"].get(g.node)
        meta["nodes"][g.node] = dict(inv, calibration=dict((known or {}).get("calibration") or {},
                                                           **{g.device: calibration}))
        drift = node_drift(meta, inv)  # another harness or torch than the head's: said, and `harness check` fails it
        if drift:
            meta["nodes"][g.node]["version_drift"] = drift
            if known is None:  # said even with --quiet: the run's figures will not pass `harness check`
                print(f"warning: node {g.node} runs another version than the head: {'; '.join(drift)} "
                      "(recorded in run.json; `harness check` fails the run)", file=sys.stderr)
        if known is None:  # run.json names every node as soon as it takes work
            write_json_atomic(run_dir / "run.json", meta)
    elif kind == "describe":
        progress.describe(f"{g.node}: {item[1]}")
    elif kind == "record":
        record = record_from_json(item[1], f"a record from node {g.node}")
        if record.cell_id in g.done:
            return
        _record(results_path, progress, record)
        g.done.add(record.cell_id)
    elif kind == "files":
        for rel, data in item[1].items():
            target = run_dir / rel
            if target.parent not in (run_dir / "logs", run_dir / "timelines") or target.is_symlink():
                continue  # only the two folders, never through a link
            mode = "ab" if rel.startswith("logs/") else "wb"  # a log gathers every attempt's lines
            with open(target, mode) as f:
                f.write(data)
