"""One validation mechanism for every file and mapping a user writes: suites, claims,
prices, meter options, backend options, scenario settings.

A schema is a dataclass. Its type hints say what each key holds; its defaults make a
key optional; a field's ``metadata={"range": (lo, hi)}`` bounds a number; a method
``problems(self) -> list[(key, message)]`` adds the checks types cannot express (run
after the fields are built, with the key reported under the dataclass's own path).

Every problem in a file is collected and reported at once, each as
``file:line: key.path: what was expected`` (unknown keys with a did-you-mean): a lab
run that dies an hour in on a typo loses the hour. A value that fails its check is
replaced by its default after being reported, so later cross-key checks never trip on a
value of the wrong type.

Why our own checker and not pydantic: this one is ~200 lines over the dataclasses the
code already uses, needs no extra package in a worker process (the GPU image has no
pydantic), keeps YAML line numbers on every message, and carries on past the first bad
value. pydantic would give the type coercion but not the lines or the carry-on.
"""
from __future__ import annotations

from dataclasses import MISSING, fields, is_dataclass
import difflib
from pathlib import Path
import types
import typing
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """One or more problems in a user's file or mapping; str() lists them all, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


#: number bounds by key name, for schemas that predate field metadata (suite keys)
RANGES = {
    "warmup": (0, 1000), "repetitions": (1, 100000), "timeout_s": (1, 7 * 24 * 3600),
    "idle_s": (0, 3600), "min_window_s": (0, 3600), "min_updates": (1, 100000),
    "seq_len": (2, 100000), "prefill_len": (1, 100000), "batch": (1, 4096), "seed": (0, 2**63 - 1),
    "threads": (1, 4096),
}
ITEM_RANGES = {"batch_sizes": (1, 65536), "prompt_lens": (1, 1 << 20), "gen_lens": (2, 1 << 20)}


def short(v, n: int = 60) -> str:
    r = repr(v)
    return r if len(r) <= n else f"{r[:n]}... ({len(r)} characters)"


# --- YAML with line numbers -------------------------------------------------------------

class YamlDoc(typing.NamedTuple):
    path: Path
    data: Any
    lines: dict[str, int]  # key path (a.b[0].c) -> line
    duplicates: list[tuple[str, int]]  # keys given twice, with the line of the second


def line_map(node: yaml.Node, path: str = "", out: dict | None = None, dups: list | None = None) -> dict[str, int]:
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
            line_map(v, key, out, dups)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            line_map(v, f"{path}[{i}]", out, dups)
    return out


def read_yaml(path: str | Path, what: str) -> YamlDoc:
    """Parse a YAML file (safe loader only) with its line map; ConfigError names the file
    and line of anything unreadable."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError([f"{path}: cannot read {what} file: {e.strerror or e}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError([f"{path}:{line}: not UTF-8 text (byte {raw[e.start:e.start + 1]!r}); "
                           f"save the {what} file as UTF-8"]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
        dups: list = []
        lines = line_map(node, dups=dups) if node else {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError([f"{where}: not valid YAML: {getattr(e, 'problem', None) or e}"]) from None
    except RecursionError:
        raise ConfigError([f"{path}: nested too deeply, or an alias that contains itself (&a [*a])"]) from None
    except Exception as e:  # noqa: BLE001 - PyYAML's constructors raise ValueError (a date 2020-13-45,
        # a 5000-digit integer), IndexError (`!!int ''`)...: still a file that is not valid YAML
        raise ConfigError([f"{path}: not valid YAML: {type(e).__name__}: {e}"]) from None
    return YamlDoc(path, data, lines, dups)


# --- the checker ----------------------------------------------------------------------------

BAD = object()  # marks a value that failed its check (already reported)


class Checker:
    """Checks data against dataclass schemas, collecting problems as `file:line: key: message`."""

    def __init__(self, file: str, lines: dict[str, int] | None = None):
        self.file, self.lines, self.problems = file, lines or {}, []

    @classmethod
    def for_doc(cls, doc: YamlDoc) -> "Checker":
        """A checker over a read file, its duplicate keys already reported."""
        chk = cls(str(doc.path), doc.lines)
        for key, line in doc.duplicates:
            chk.problems.append(f"{doc.path}:{line}: {key}: key given twice (the first value would be silently ignored)")
        return chk

    def fail(self, path: str, msg: str) -> None:
        line = self.lines.get(path) or self.lines.get(path.rsplit(".", 1)[0]) or self.lines.get("")
        where = f"{self.file}:{line}" if line else self.file
        if not path and not self.lines:  # a mapping outside any file: `where` already names it
            self.problems.append(f"{where}: {msg}")
        else:
            self.problems.append(f"{where}: {path or '(top level)'}: {msg}")

    def _bad(self, path: str, msg: str):
        self.fail(path, msg)
        return BAD

    def value(self, hint, data, path: str, rng: tuple | None = None):
        """Check data against a type hint; return the converted value (dataclasses built),
        or BAD after reporting why."""
        origin, args = get_origin(hint), get_args(hint)
        if hint is Any:
            return data
        if origin in (typing.Union, types.UnionType):
            if data is None and type(None) in args:
                return None
            inner = [a for a in args if a is not type(None)]
            if len(inner) == 1:
                return self.value(inner[0], data, path, rng)
            for a in inner:  # the first alternative the value is an instance of
                base = get_origin(a) or a
                if isinstance(base, type) and isinstance(data, base) and not (base in (int, float)
                                                                              and isinstance(data, bool)):
                    return self.value(a, data, path, rng)
            names = " or ".join(getattr(get_origin(a) or a, "__name__", str(a)) for a in inner)
            return self._bad(path, f"expected {names}, got {short(data)}")
        if origin is Literal:
            return data if data in args else self._bad(path, f"expected one of {', '.join(map(str, args))}, "
                                                             f"got {short(data)}")
        if is_dataclass(hint):
            out = self.dataclass(hint, data, path)
            return BAD if out is None else out
        if origin is list or hint is list:
            if not isinstance(data, list):
                return self._bad(path, f"expected a list, got {type(data).__name__} {short(data)}")
            item = args[0] if args else Any
            key = path.rsplit(".", 1)[-1].split("[")[0]
            items = [self.value(item, x, f"{path}[{i}]", ITEM_RANGES.get(key) if rng is None else rng)
                     for i, x in enumerate(data)]
            return [x for x in items if x is not BAD]
        if origin is dict or hint is dict:
            return data if isinstance(data, dict) else \
                self._bad(path, f"expected a mapping, got {type(data).__name__} {short(data)}")
        if hint is bool:
            return data if isinstance(data, bool) else self._bad(path, f"expected true or false, got {short(data)}")
        if hint in (int, float):
            ok = isinstance(data, (int, float)) and not isinstance(data, bool) and (hint is float or isinstance(data, int))
            if not ok:
                return self._bad(path, f"expected {'an integer' if hint is int else 'a number'}, got {short(data)}")
            if hint is float and data != data:  # NaN passes every comparison below
                return self._bad(path, f"expected a number, got {short(data)}")
            if rng and not (rng[0] <= data <= rng[1]):
                return self._bad(path, f"expected a value from {rng[0]:g} to {rng[1]:g}, got {short(data)}"
                                 if isinstance(rng[0], float) or isinstance(rng[1], float) else
                                 f"expected a value from {rng[0]} to {rng[1]}, got {short(data)}")
            try:
                return hint(data)
            except OverflowError:  # an integer too large for a float
                return self._bad(path, f"expected a number, got {short(data)}")
        if hint is str:
            return data if isinstance(data, str) else self._bad(path, f"expected a string, got {short(data)}")
        return data

    def dataclass(self, cls, data, path: str):
        """Build dataclass `cls` from a mapping, reporting every problem; None when it cannot be built."""
        if data is None:
            data = {}
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            self.fail(path, f"expected a mapping with keys {', '.join(f.name for f in fields(cls))}, "
                            f"got {short(data)}")
            return None
        hints = get_type_hints(cls)
        by_name = {f.name: f for f in fields(cls) if f.init and not f.name.startswith("_")}
        kwargs = {}
        for key, val in data.items():
            p = f"{path}.{key}" if path else str(key)
            if key not in by_name:
                close = difflib.get_close_matches(str(key), list(by_name), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(by_name)})"
                extra = getattr(cls, "unknown_key_hint", "")  # a schema's word on keys people expect it to take
                self.fail(p, f"unknown key{hint}" + (f": {extra}" if extra else ""))
                continue
            rng = by_name[key].metadata.get("range", RANGES.get(key))
            checked = self.value(hints[key], val, p, rng)
            if checked is not BAD:  # a bad value is reported; the default stands in for it
                kwargs[key] = checked
        for name, f in by_name.items():
            if name not in kwargs and f.default is MISSING and f.default_factory is MISSING:
                if name not in data:
                    self.fail(f"{path}.{name}" if path else name, "required key missing")
                # carry on with an empty value so the rest of the file is checked too
                kwargs[name] = [] if hints[name] is list or get_origin(hints[name]) is list else ""
        try:
            obj = cls(**kwargs)
        except Exception as e:  # noqa: BLE001 - an Options' own __post_init__ may raise anything
            self.fail(path, str(e))
            return None
        check = getattr(obj, "problems", None)
        if callable(check):
            for key, msg in check():
                self.fail(f"{path}.{key}" if path and key else (key or path), msg)
        return obj


def build(cls, data: Any, where: str, error: type[Exception] = ConfigError):
    """Build schema `cls` from a mapping outside any file (backend options handed to a
    worker, meter options from Python): every problem in one `error`."""
    chk = Checker(where)
    out = chk.dataclass(cls, data, "")
    if chk.problems or out is None:
        problems = chk.problems or [f"{where}: cannot build {cls.__name__}"]
        raise error(problems) if error is ConfigError else error("; ".join(problems))
    return out


def check_file(cls, path: str | Path, what: str):
    """Read a YAML file and build schema `cls` from it, or raise ConfigError with every problem."""
    doc = read_yaml(path, what)
    chk = Checker.for_doc(doc)
    out = chk.dataclass(cls, doc.data, "")
    if chk.problems or out is None:
        raise ConfigError(chk.problems or [f"{doc.path}: expected a mapping of {what} keys"])
    return out
