"""Suite YAML -> validated plan.

Every problem in a suite is collected and reported at once, each naming the file, the
key path, its line, and what was expected, before anything runs: a lab run that dies
an hour in on a typo loses the hour.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass, MISSING
import difflib
import itertools
from pathlib import Path
import types
import typing
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

SUITES_DIR = Path(__file__).resolve().parent.parent / "workloads" / "suites"


class ConfigError(ValueError):
    """One or more problems in a suite file; str() lists them all, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


# --- the schema ---------------------------------------------------------------------

@dataclass
class BackendConfig:
    type: str  # registered backend name (entry point), e.g. torch, onnxruntime
    name: str = ""  # label in tables; default: type-device
    options: dict = field(default_factory=dict)
    optional: bool = False  # skip (with a note) when the backend's packages are not installed


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
    seed: int = 0
    warmup: int = 1
    repetitions: int = 10  # 5 is the least for a bootstrap interval that holds its coverage (harness.stats)
    scenario: str | dict = "offline"  # a type name, or a mapping (harness.scenarios.loadgen.ScenarioConfig)
    timeout_s: float = 900.0  # per cell, in its worker process
    meters: list[dict] | None = None  # default: each backend's own meters
    energy: EnergyConfig = field(default_factory=EnergyConfig)
    accuracy: AccuracyConfig = field(default_factory=AccuracyConfig)
    output: str = "results"


RANGES = {  # key -> (min, max) for numbers; checked wherever the key appears
    "warmup": (0, 1000), "repetitions": (1, 100000), "timeout_s": (1, 7 * 24 * 3600),
    "idle_s": (0, 3600), "min_window_s": (0, 3600), "min_updates": (1, 100000),
    "seq_len": (2, 100000), "prefill_len": (1, 100000), "batch": (1, 4096), "seed": (0, 2**63 - 1),
    "threads": (1, 4096),
}
ITEM_RANGES = {"batch_sizes": (1, 65536), "prompt_lens": (1, 1 << 20), "gen_lens": (2, 1 << 20)}


# --- YAML with line numbers ---------------------------------------------------------

def _line_map(node: yaml.Node, path: str = "", out: dict | None = None, dups: list | None = None) -> dict[str, int]:
    """key path -> line; duplicate keys (which YAML would silently let the last one win)
    are collected into `dups` as (path, line)."""
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set = set()
        for k, v in node.value:
            key = f"{path}.{k.value}" if path else str(k.value)
            if k.value in seen and dups is not None:
                dups.append((key, k.start_mark.line + 1))
            seen.add(k.value)
            out[key] = k.start_mark.line + 1
            _line_map(v, key, out, dups)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _line_map(v, f"{path}[{i}]", out, dups)
    return out


def _short(v, n: int = 60) -> str:
    r = repr(v)
    return r if len(r) <= n else f"{r[:n]}... ({len(r)} characters)"


_BAD = object()  # marks a value that failed its check (already reported)


class _Checker:
    def __init__(self, file: str, lines: dict[str, int]):
        self.file, self.lines, self.problems = file, lines, []

    def fail(self, path: str, msg: str) -> None:
        line = self.lines.get(path) or self.lines.get(path.rsplit(".", 1)[0]) or self.lines.get("")
        where = f"{self.file}:{line}" if line else self.file
        self.problems.append(f"{where}: {path or '(top level)'}: {msg}")

    def value(self, hint, data, path: str):
        """Check data against a type hint; return the converted value (dataclasses built),
        or _BAD after reporting why, so later checks never see a value of the wrong type."""
        origin, args = get_origin(hint), get_args(hint)
        if hint is Any:
            return data
        if origin in (typing.Union, types.UnionType):
            if data is None and type(None) in args:
                return None
            inner = [a for a in args if a is not type(None)]
            if len(inner) == 1:
                return self.value(inner[0], data, path)
            if not any(isinstance(data, get_origin(a) or a) for a in inner):
                names = " or ".join(getattr(get_origin(a) or a, "__name__", str(a)) for a in inner)
                return self._bad(path, f"expected {names}, got {_short(data)}")
            return data
        if origin is Literal:
            return data if data in args else self._bad(path, f"expected one of {', '.join(map(str, args))}, got {_short(data)}")
        if is_dataclass(hint):
            out = self.dataclass(hint, data, path)
            return _BAD if out is None else out
        if origin is list or hint is list:
            if not isinstance(data, list):
                return self._bad(path, f"expected a list, got {type(data).__name__} {_short(data)}")
            item = args[0] if args else Any
            items = [self.value(item, x, f"{path}[{i}]") for i, x in enumerate(data)]
            return [x for x in items if x is not _BAD]
        if origin is dict or hint is dict:
            return data if isinstance(data, dict) else \
                self._bad(path, f"expected a mapping, got {type(data).__name__} {_short(data)}")
        if hint is bool:
            return data if isinstance(data, bool) else self._bad(path, f"expected true or false, got {_short(data)}")
        if hint in (int, float):
            ok = isinstance(data, (int, float)) and not isinstance(data, bool) and (hint is float or isinstance(data, int))
            if not ok:
                return self._bad(path, f"expected {'an integer' if hint is int else 'a number'}, got {_short(data)}")
            key = path.rsplit(".", 1)[-1].split("[")[0]
            rng = ITEM_RANGES.get(key) if "[" in path.rsplit(".", 1)[-1] else RANGES.get(key)
            if rng and not (rng[0] <= data <= rng[1]):
                return self._bad(path, f"expected a value from {rng[0]} to {rng[1]}, got {_short(data)}")
            try:
                return hint(data)
            except OverflowError:  # an integer too large for a float
                return self._bad(path, f"expected a number, got {_short(data)}")
        if hint is str:
            return data if isinstance(data, str) else self._bad(path, f"expected a string, got {_short(data)}")
        return data

    def _bad(self, path: str, msg: str):
        self.fail(path, msg)
        return _BAD

    def dataclass(self, cls, data, path: str):
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.fail(path, f"expected a mapping with keys {', '.join(f.name for f in fields(cls))}, got {data!r}")
            return None
        hints = get_type_hints(cls)
        names = [f.name for f in fields(cls)]
        kwargs = {}
        for key, val in data.items():
            p = f"{path}.{key}" if path else str(key)
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(names)})"
                self.fail(p, f"unknown key{hint}")
                continue
            checked = self.value(hints[key], val, p)
            if checked is not _BAD:  # a bad value is reported; the default stands in for it
                kwargs[key] = checked
        for f in fields(cls):
            if f.name not in kwargs and f.default is MISSING and f.default_factory is MISSING:
                self.fail(f"{path}.{f.name}" if path else f.name, "required key missing")
                # carry on with an empty value so the rest of the file is checked too
                kwargs[f.name] = [] if get_origin(hints[f.name]) is list else ""
        try:
            return cls(**kwargs)
        except Exception as e:  # noqa: BLE001 - a wrong type reported above, or an Options' own check
            self.fail(path, str(e))  # (a plugin's or a meter's __post_init__ may raise anything)
            return None


# --- the plan -------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    backend: str  # label
    backend_type: str
    model: str
    dtype: str
    batch: int
    prompt_len: int
    gen_len: int
    scenario: str  # offline | single-stream | concurrency | server@<rate>
    rate: float | None = None  # requests/s of one point of a server sweep

    @property
    def id(self) -> str:
        return f"{self.backend}/{self.model}/{self.dtype}/b{self.batch}/p{self.prompt_len}/g{self.gen_len}/{self.scenario}"

    @property
    def group(self) -> tuple[str, str, str]:
        """Cells sharing a loaded model: one worker process runs them in turn."""
        return (self.backend, self.model, self.dtype)


@dataclass
class Plan:
    suite: SuiteConfig
    source: str
    cells: list[Cell]
    skipped: list[str] = field(default_factory=list)  # optional backends left out, and why

    def backend(self, label: str) -> BackendConfig:
        return next(b for b in self.suite.backends if b.name == label)

    def workload(self, cell: Cell) -> WorkloadConfig:
        return next(w for w in self.suite.workloads if w.model == cell.model and cell.dtype in w.dtypes
                    and cell.batch in w.batch_sizes)

    def groups(self) -> dict[tuple[str, str, str], list[Cell]]:
        out: dict[tuple[str, str, str], list[Cell]] = {}
        for c in self.cells:
            out.setdefault(c.group, []).append(c)
        return out


def resolve_suite_path(name_or_path: str | None) -> Path:
    """A path, or the name of a shipped suite (smoke, standard, procurement)."""
    if name_or_path is None:
        return SUITES_DIR / "smoke.yaml"
    p = Path(name_or_path)
    if p.exists() or p.suffix in (".yaml", ".yml"):
        return p
    shipped = SUITES_DIR / f"{name_or_path}.yaml"
    return shipped if shipped.exists() else p


def load_plan(path: str | Path) -> Plan:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError([f"{path}: cannot read suite file: {e.strerror or e}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError([f"{path}:{line}: not UTF-8 text (byte {raw[e.start:e.start + 1]!r}); "
                           "save the suite as UTF-8"]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
        dups: list = []
        lines = _line_map(node, dups=dups) if node else {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError([f"{where}: not valid YAML: {getattr(e, 'problem', None) or e}"]) from None
    except RecursionError:
        raise ConfigError([f"{path}: nested too deeply, or an alias that contains itself (&a [*a])"]) from None
    except Exception as e:  # noqa: BLE001 - PyYAML's constructors raise ValueError (a date 2020-13-45,
        # a 5000-digit integer), IndexError (`!!int ''`)...: still a file that is not valid YAML
        raise ConfigError([f"{path}: not valid YAML: {type(e).__name__}: {e}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: expected a mapping of suite keys at the top level, got {type(data).__name__}"])
    chk = _Checker(str(path), lines)
    for key, line in dups:
        chk.problems.append(f"{path}:{line}: {key}: key given twice (the first value would be silently ignored)")
    suite = chk.dataclass(SuiteConfig, data, "")
    if suite is None:
        raise ConfigError(chk.problems)
    skipped = _check_semantics(suite, chk)
    if chk.problems:
        raise ConfigError(chk.problems)
    suite.backends = [b for b in suite.backends if b.name not in skipped]
    scen = scenario_dict(suite)
    points = [(f"server@{r:g}", float(r)) for r in scen.get("rates", [])] if scen["type"] == "server" \
        else [(scen["type"], None)]
    cells = [
        Cell(b.name, b.type, w.model, dt, bs, p, g, label, rate)
        for b in suite.backends
        for w in suite.workloads
        for dt, bs, p, g in itertools.product(w.dtypes, w.batch_sizes, w.prompt_lens, w.gen_lens)
        for label, rate in points
    ]
    return Plan(suite, str(path), cells, [f"{k}: {v}" for k, v in skipped.items()])


def scenario_dict(suite: SuiteConfig) -> dict:
    """The suite's scenario as a mapping with at least a `type`."""
    return {"type": suite.scenario} if isinstance(suite.scenario, str) else {"type": "offline", **suite.scenario}


def _missing_packages(cls) -> list[str]:
    """pip requirements of a backend whose import packages are not installed."""
    import importlib.util

    return [req for module, req in cls.requires.items() if importlib.util.find_spec(module) is None]


def _check_semantics(suite: SuiteConfig, chk: _Checker) -> dict[str, str]:
    """Cross-key checks; returns {label: why} for optional backends to leave out."""
    from harness.registry import RegistryError, load_backend_class
    from workloads.zoo import DTYPE_BYTES, ZOO

    for key in ("backends", "workloads"):
        if not getattr(suite, key) and key in chk.lines:
            chk.fail(key, "expected a list with at least one entry")
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
        opts = chk.dataclass(cls.Options, b.options, f"{p}.options")
        if not b.name:
            b.name = f"{b.type}-{cls.device_of(opts) if opts else 'default'}".replace(":", "")
        if b.name in labels:
            chk.fail(f"{p}.name", f"backend label {b.name!r} used twice; give each backend a distinct name")
        labels.add(b.name)
        if "/" in b.name or b.name.startswith("."):
            chk.fail(f"{p}.name", f"expected a label without '/' or a leading '.', got {b.name!r}")
        missing = _missing_packages(cls)
        if missing and b.optional:
            skipped[b.name] = f"optional backend skipped: not installed here (pip install {' '.join(missing)})"
            continue
        if missing:
            chk.fail(f"{p}.type", f"backend {b.type!r} needs packages that are not installed: "
                                  f"pip install {' '.join(missing)} (or mark it `optional: true`)")
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
            chk.fail(f"{p}.checkpoint", f"expected a Hugging Face Llama folder with config.json, got {w.checkpoint!r}")
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
    _check_scenario(suite, chk)
    a = suite.accuracy
    if a and a.prefill_len >= a.seq_len:
        chk.fail("accuracy.prefill_len", f"expected less than accuracy.seq_len ({a.seq_len}), got {a.prefill_len}")
    if suite.meters is not None:
        _check_meters(suite.meters, chk)
    return skipped


def _check_scenario(suite: SuiteConfig, chk: _Checker) -> None:
    from harness.scenarios.loadgen import ScenarioConfig

    types_ = get_args(get_type_hints(ScenarioConfig)["type"])
    if isinstance(suite.scenario, str):
        if suite.scenario not in types_:
            chk.fail("scenario", f"expected one of {', '.join(types_)} (or a mapping with `type:`), got {suite.scenario!r}")
            suite.scenario = "offline"
        if suite.scenario == "server":
            chk.fail("scenario", "the server scenario needs a mapping with `rates:` (requests/s), e.g. "
                                 "{type: server, rates: [1, 2, 4]}")
            suite.scenario = "offline"
        return
    if not isinstance(suite.scenario, dict):
        chk.fail("scenario", f"expected a scenario name or a mapping, got {suite.scenario!r}")
        suite.scenario = "offline"
        return
    cfg = chk.dataclass(ScenarioConfig, suite.scenario, "scenario")
    if cfg is None:
        suite.scenario = "offline"
        return
    for key, msg in cfg.problems():  # values of a wrong type were replaced by defaults
        chk.fail(f"scenario.{key}", msg)


def _check_meters(meters: list[dict], chk: _Checker) -> None:
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
            chk.fail(f"{p}.type", f"expected one of {', '.join(METER_TYPES)}, got {_short(m['type'])}")
            continue
        cls = METER_TYPES.get(m["type"])
        if cls is None:
            close = difflib.get_close_matches(str(m["type"]), list(METER_TYPES), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            chk.fail(f"{p}.type", f"unknown meter type {m['type']!r}{hint}; expected one of {', '.join(METER_TYPES)}")
            continue
        chk.dataclass(cls.Options, {k: v for k, v in m.items() if k != "type"}, p)


def options_from_dict(cls, data: dict, where: str = "options"):
    """Build a backend's Options dataclass (already validated by load_plan)."""
    chk = _Checker(where, {})
    out = chk.dataclass(cls, data, where)
    if chk.problems:
        raise ConfigError(chk.problems)
    return out
