"""Suite YAML -> validated plan.

Every problem in a suite is collected and reported at once, each naming the file, the
key path, its line, and what was expected, before anything runs: a lab run that dies
an hour in on a typo loses the hour.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import difflib
import itertools
from pathlib import Path

from harness.records import PlannedCell
from harness.scenarios.base import Scenario
from harness.schema import (METER_ENTRY_KEYS, Checker, ConfigError, name_problem, read_yaml, regular_file_problem,
                            short)

SUITES_DIR = Path(__file__).resolve().parent.parent / "workloads" / "suites"

#: The most cells one suite may plan. A real suite plans tens to a few thousand cells (the
#: standard suite: hundreds); each takes seconds to minutes, so 100,000 is already weeks of
#: machine time. Above it the plan alone costs seconds and hundreds of MB (a million cells:
#: 17 s, 570 MB), so the count is taken from the axis lengths before anything is expanded.
MAX_CELLS = 100_000
#: a backend label is part of each worker's log and timeline file names (255-byte limit)
MAX_LABEL_CHARS = 100


# --- the schema ---------------------------------------------------------------------

@dataclass
class PlacementConfig:
    """Where a backend's groups run on a cluster (`harness run --cluster`): the Ray
    resources one group's task asks for, so a GPU group lands on a GPU node, and the node
    labels it must find (`ray start --labels`, matched by Ray's label selectors)."""

    resources: dict = field(default_factory=dict)  # Ray custom resources, e.g. {"accelerator:rngd": 1}
    num_cpus: float = field(default=1.0, metadata={"range": (0.0, 1024.0)})
    node_label: dict = field(default_factory=dict)  # Ray label selector, e.g. {"lab.example/chip": "rngd"}

    def problems(self) -> list[tuple[str, str]]:
        from harness.fleet import label_selector_problems

        out = label_selector_problems(self.node_label, "node_label")
        for k, v in self.resources.items():
            if not isinstance(k, str) or not k or k in ("CPU", "GPU", "memory"):
                out.append(("resources", f"expected custom resource names (num_cpus sets CPUs), got {short(k)}"))
            elif isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1e6:
                out.append((f"resources.{k}", f"expected a number above 0, got {short(v)}"))
        return out


@dataclass
class BackendConfig:
    type: str  # registered backend name (entry point), e.g. torch, onnxruntime
    name: str = ""  # label in tables; default: type-device
    options: dict = field(default_factory=dict)
    optional: bool = False  # skip (with a note) when the backend's packages are not installed
    placement: PlacementConfig | None = None  # used only on a cluster (harness.fleet)


@dataclass
class WorkloadConfig:
    model: str
    dtypes: list[str] = field(default_factory=lambda: ["fp32"])
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    prompt_lens: list[int] = field(default_factory=lambda: [128])
    gen_lens: list[int] = field(default_factory=lambda: [32])
    checkpoint: str | None = None  # local Hugging Face Llama folder
    seed: int | None = None  # default: the suite's seed


@dataclass
class EnergyConfig:
    enabled: bool = True
    idle_s: float = 1.0  # idle window before and after each cell
    min_window_s: float = 1.0  # a measurement window is lengthened to at least this
    min_updates: int = 10  # ... and to this many meter updates
    lengthen: bool = True  # false: flag short windows instead of repeating the work


@dataclass
class AccuracyConfig:
    enabled: bool = True
    seq_len: int = 24  # fixed sequences checked per cell
    prefill_len: int = 16  # the rest goes through the decode path, one token at a time
    batch: int = 2
    seed: int = 1234
    reference_device: str | None = None  # default: the backend's device (cuda weights differ from cpu's)


@dataclass
class SuiteConfig:
    name: str
    backends: list[BackendConfig]
    workloads: list[WorkloadConfig]
    description: str = ""
    lab: str = ""  # who ran it (issue 17): reports and `harness check` name each run's lab
    seed: int = 0
    warmup: int = 1
    repetitions: int = 10  # 5 is the least for a bootstrap interval that holds its coverage (harness.stats)
    scenario: str | dict = "offline"  # a registered scenario name, or a mapping with `type:` and its keys
    timeout_s: float = 900.0  # per cell, in its worker process
    meters: list[dict] | None = None  # default: each backend's own meters
    energy: EnergyConfig = field(default_factory=EnergyConfig)
    accuracy: AccuracyConfig = field(default_factory=AccuracyConfig)
    output: str = "results"
    cluster: str | None = None  # a Ray address (harness.fleet); --cluster overrides it
    # groups running at once on a cluster; None: as many as the nodes' resources allow
    max_concurrent_groups: int | None = field(default=None, metadata={"range": (1, 100_000)})


# --- the plan -------------------------------------------------------------------

@dataclass
class Plan:
    suite: SuiteConfig
    source: str
    cells: list[PlannedCell]
    scenario: Scenario  # the suite's scenario, its config validated
    skipped: list[str] = field(default_factory=list)  # optional backends left out, and why

    def backend(self, label: str) -> BackendConfig:
        return next(b for b in self.suite.backends if b.name == label)

    def workload(self, cell: PlannedCell) -> WorkloadConfig:
        return next(w for w in self.suite.workloads if w.model == cell.model and cell.dtype in w.dtypes
                    and cell.batch in w.batch_sizes)


def resolve_suite_path(name_or_path: str | None) -> Path:
    """A path, or the name of a shipped suite (a file stem under workloads/suites/)."""
    if name_or_path is None:
        return SUITES_DIR / "smoke.yaml"
    if not name_or_path.strip():  # Path("") is ".", which would be reported as an unreadable directory
        shipped = ", ".join(sorted(f.stem for f in SUITES_DIR.glob("*.yaml")))
        raise ConfigError([f"suite: the argument is empty: give a suite YAML file or a shipped suite name "
                           f"({shipped})"])
    p = Path(name_or_path)
    if p.exists() or p.suffix in (".yaml", ".yml"):
        return p
    shipped = SUITES_DIR / f"{name_or_path}.yaml"
    return shipped if shipped.exists() else p


def load_plan(path: str | Path) -> Plan:
    doc = read_yaml(path, "suite")
    path, data = doc.path, doc.data
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: expected a mapping of suite keys at the top level, got {type(data).__name__}"])
    chk = Checker.for_doc(doc)
    suite = chk.dataclass(SuiteConfig, data, "")
    if suite is None:
        raise ConfigError(chk.problems)
    skipped, scenario = _check_semantics(suite, chk)
    if chk.problems or scenario is None:
        raise ConfigError(chk.problems)
    suite.backends = [b for b in suite.backends if b.name not in skipped]
    _check_cell_count(suite, scenario, chk)
    if chk.problems:
        raise ConfigError(chk.problems)
    cells = [
        PlannedCell(b.name, b.type, w.model, dt, bs, p, g, point.label, point.rate)
        for b in suite.backends
        for w in suite.workloads
        for dt, bs, p, g in itertools.product(w.dtypes, w.batch_sizes, w.prompt_lens, w.gen_lens)
        for point in scenario.points()
    ]
    return Plan(suite, str(path), cells, scenario, [f"{k}: {v}" for k, v in skipped.items()])


def count_cells(suite: SuiteConfig, scenario: Scenario) -> int:
    """How many cells the suite plans: a product of list lengths, nothing expanded."""
    per_backend = sum(len(w.dtypes) * len(w.batch_sizes) * len(w.prompt_lens) * len(w.gen_lens)
                      for w in suite.workloads if w is not None)
    return len(suite.backends) * per_backend * len(scenario.points())


def _check_cell_count(suite: SuiteConfig, scenario: Scenario, chk: Checker) -> None:
    n = count_cells(suite, scenario)
    if n > MAX_CELLS:
        points = len(scenario.points())
        chk.fail("workloads", f"the suite plans {n:,} cells ({len(suite.backends)} backends x "
                              f"{n // max(1, len(suite.backends) * points):,} workload combinations "
                              f"(dtypes x batch_sizes x prompt_lens x gen_lens) x {points} scenario points); "
                              f"the limit is {MAX_CELLS:,}: split it into several suites")


def scenario_dict(suite: SuiteConfig) -> dict:
    """The suite's scenario as a mapping with at least a `type`."""
    return {"type": suite.scenario} if isinstance(suite.scenario, str) else {"type": "offline", **suite.scenario}


def _missing_packages(cls) -> list[str]:
    """pip requirements of a backend whose import packages are not installed."""
    import importlib.util

    return [req for module, req in cls.requires.items() if importlib.util.find_spec(module) is None]


def _check_semantics(suite: SuiteConfig, chk: Checker) -> tuple[dict[str, str], Scenario | None]:
    """Cross-key checks; returns {label: why} for optional backends to leave out, and the
    suite's scenario (None when it is not valid)."""
    from harness.registry import RegistryError, load_backend_class
    from workloads.zoo import DTYPE_BYTES, ZOO

    for key in ("backends", "workloads"):
        if not getattr(suite, key) and key in chk.lines:
            chk.fail(key, "expected a list with at least one entry")
    if suite.name and (why := name_problem(suite.name)):  # it names the run folder
        chk.fail("name", why)
    labels: set[str] = set()
    backend_classes = {}
    skipped: dict[str, str] = {}
    for i, b in enumerate(suite.backends):
        p = f"backends[{i}]"
        if b is None or not b.type:  # a bad or missing type is already reported
            continue
        try:
            cls = load_backend_class(b.type)
        except RegistryError as e:
            chk.fail(f"{p}.type", str(e))
            continue
        n_before = len(chk.problems)
        opts = chk.dataclass(cls.Options, b.options, f"{p}.options")
        for key, msg in (opts.file_problems() if opts and hasattr(opts, "file_problems") else []):
            chk.fail(f"{p}.options.{key}", msg)  # files the options name, as they are now
        if not b.name:
            # from the device; a device already reported as bad would only be reported again here
            device = cls.device_of(opts) if opts and len(chk.problems) == n_before else "default"
            b.name = f"{b.type}-{device}".replace(":", "")
        if b.name in labels:
            chk.fail(f"{p}.name", f"backend label {b.name!r} used twice; give each backend a distinct name")
        labels.add(b.name)
        if "/" in b.name or b.name.startswith("."):
            chk.fail(f"{p}.name", f"expected a label without '/' or a leading '.', got {short(b.name)}")
        elif len(b.name) > MAX_LABEL_CHARS or not b.name.isprintable():  # it names log and timeline files
            chk.fail(f"{p}.name", f"expected a label of at most {MAX_LABEL_CHARS} printable characters, "
                                  f"got {short(b.name)}")
        missing = _missing_packages(cls)
        if missing and b.optional:
            skipped[b.name] = f"optional backend skipped: not installed here (pip install {' '.join(missing)})"
            continue
        if missing:
            chk.fail(f"{p}.type", f"backend {b.type!r} needs packages that are not installed: "
                                  f"pip install {' '.join(missing)} (or mark it `optional: true`)")
        elif opts is not None and b.placement is None and not suite.cluster and hasattr(opts, "host_problems"):
            # a failure every cell would meet in its worker (an ONNX provider this machine lacks), said
            # now; a group placed on a cluster node is judged there
            host = opts.host_problems()
            if host and b.optional:
                skipped[b.name] = "optional backend skipped: " + "; ".join(msg for _, msg in host)[:300]
                continue
            for key, msg in host:
                chk.fail(f"{p}.options.{key}", msg)
        backend_classes[b.name] = cls
    for i, w in enumerate(suite.workloads):
        p = f"workloads[{i}]"
        if w is None:
            continue
        if w.model and w.model not in ZOO and not w.checkpoint:
            close = difflib.get_close_matches(w.model, list(ZOO), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            chk.fail(f"{p}.model", f"unknown model {w.model!r}{hint}; expected one of {', '.join(ZOO)} "
                                   "or a `checkpoint:` folder")
        if w.checkpoint and not (Path(w.checkpoint) / "config.json").exists():
            chk.fail(f"{p}.checkpoint", f"expected a Hugging Face Llama folder with config.json, got {short(w.checkpoint)}")
        elif w.checkpoint and (why := regular_file_problem(str(Path(w.checkpoint) / "config.json"), "checkpoint config",
                                                           1 << 20)):
            chk.fail(f"{p}.checkpoint", why)  # a FIFO or a huge file would hang or flood the worker
        for j, dt in enumerate(w.dtypes):
            if dt not in DTYPE_BYTES:
                chk.fail(f"{p}.dtypes[{j}]", f"expected one of {', '.join(DTYPE_BYTES)}, got {dt!r}")
                continue
            for label, cls in backend_classes.items():
                if dt not in cls.dtypes:
                    chk.fail(f"{p}.dtypes[{j}]", f"backend {label!r} cannot run {dt}; it runs {', '.join(cls.dtypes)}")
        for key in ("dtypes", "batch_sizes", "prompt_lens", "gen_lens"):
            if not getattr(w, key):
                chk.fail(f"{p}.{key}", "expected a non-empty list")
        args = ZOO.get(w.model)
        if args:
            longest = max(w.prompt_lens, default=0) + max(w.gen_lens, default=0)
            if longest > args.max_seq_len:
                chk.fail(f"{p}.prompt_lens", f"prompt + generation = {longest} exceeds {w.model}'s "
                                             f"{args.max_seq_len} positions")
    scenario = _check_scenario(suite, chk)
    if scenario is not None:
        for label, cls in backend_classes.items():
            if cls.kind not in scenario.backend_kinds:
                i = next(i for i, b in enumerate(suite.backends) if b.name == label)
                chk.fail(f"backends[{i}].type", f"backend {label!r} is a {cls.kind} backend and the "
                         f"{scenario.name} scenario drives {' or '.join(scenario.backend_kinds)} backends only"
                         + ("; use single-stream, concurrency or server" if cls.kind == "request" else ""))
    a = suite.accuracy
    if a and a.prefill_len >= a.seq_len:
        chk.fail("accuracy.prefill_len", f"expected less than accuracy.seq_len ({a.seq_len}), got {a.prefill_len}")
    if suite.meters is not None:
        _check_meters(suite.meters, chk)
    return skipped, scenario


def _check_scenario(suite: SuiteConfig, chk: Checker) -> Scenario | None:
    """The suite's scenario from the registry, its keys checked against its Config schema."""
    from harness.registry import RegistryError, load_scenario_class, scenario_entry_points

    names = ", ".join(scenario_entry_points())
    if not isinstance(suite.scenario, (str, dict)):
        chk.fail("scenario", f"expected a scenario name ({names}) or a mapping with `type:`, got {short(suite.scenario)}")
        return None
    mapping = scenario_dict(suite)
    name = mapping["type"]
    path = "scenario.type" if isinstance(suite.scenario, dict) else "scenario"
    if not isinstance(name, str):
        chk.fail(path, f"expected one of {names}, got {short(name)}")
        return None
    if name not in scenario_entry_points():
        close = difflib.get_close_matches(name, list(scenario_entry_points()), n=1)
        chk.fail(path, f"expected one of {names} (a registered scenario), got {name!r}"
                 + (f" (did you mean {close[0]!r}?)" if close else ""))
        return None
    try:
        cls = load_scenario_class(name)
    except RegistryError as e:
        chk.fail(path, str(e))
        return None
    config = chk.dataclass(cls.Config, mapping, "scenario")
    if config is None:
        return None
    scenario = cls(config)
    if not scenario.points():
        chk.fail("scenario", f"the {name} scenario expands into no cell")
        return None
    return scenario


def _check_meters(meters: list[dict], chk: Checker) -> None:
    try:
        from harness.meters import METER_TYPES
    except ImportError:
        return
    for i, m in enumerate(meters):
        p = f"meters[{i}]"
        if not isinstance(m, dict) or "type" not in m:
            chk.fail(p, f"expected a mapping with a `type:` ({', '.join(METER_TYPES)})")
            continue
        if not isinstance(m["type"], str):
            chk.fail(f"{p}.type", f"expected one of {', '.join(METER_TYPES)}, got {short(m['type'])}")
            continue
        cls = METER_TYPES.get(m["type"])
        if cls is None:
            close = difflib.get_close_matches(str(m["type"]), list(METER_TYPES), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            chk.fail(f"{p}.type", f"unknown meter type {m['type']!r}{hint}; expected one of {', '.join(METER_TYPES)}")
            continue
        if not isinstance(m.get("primary", False), bool):
            chk.fail(f"{p}.primary", f"expected true or false, got {short(m['primary'])}")
        opts = chk.dataclass(cls.Options, {k: v for k, v in m.items() if k not in METER_ENTRY_KEYS}, p)
        # the files a meter reads, as they are now (a log that exists must be a regular file
        # whose header names the columns): said here, not when a worker first reads it
        for key, msg in (opts.file_problems() if opts and hasattr(opts, "file_problems") else []):
            chk.fail(f"{p}.{key}", msg)
