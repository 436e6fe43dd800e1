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
import math
import os
from pathlib import Path
import re
import stat
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
    # scenario and meter keys (issue 14): upper bounds where a huge value would allocate or
    # sleep without end in a worker; lower bounds left to each schema's own message
    "requests": (0, 1_000_000), "warmup_requests": (0, 100_000), "max_in_flight": (1, 100_000),
    "concurrency": (0, 100_000), "shared_prefix_tokens": (0, 1 << 20),
    "drain_timeout_s": (0.0, 7 * 24 * 3600.0), "cooldown_s": (-86400.0, 86400.0),
    "period_s": (0.0, 3600.0), "stall_s": (0.0, 86400.0), "max_gap_s": (0.0, 86400.0), "index": (0, 65535),
}
ITEM_RANGES = {"batch_sizes": (1, 65536), "prompt_lens": (1, 1 << 20), "gen_lens": (2, 1 << 20),
               "devices": (0, 65535), "token_range": (0, 1 << 24)}

#: keys every entry of a suite's `meters:` list takes besides its type's own options:
#: `type`, and `primary: true`, the meter a report reads a cell's energy figures from when it
#: has several (issue 20; headline, tables and verdicts alike: harness.figures.primary_meter,
#: which without it takes the better quality, then the widest scope, and the headline says which)
METER_ENTRY_KEYS = ("type", "primary")


#: Every string value of a schema (a suite, claims, prices, meter or backend options): a
#: device name, a path or a description is tens of characters; a 200 kB one must be refused
#: here, not when it becomes a file name halfway through a run.
MAX_STRING_CHARS = 4096
#: A number without a range of its own still has to fit what it is handed to: a C int64
#: (thread counts, sizes), or a finite double (inf seconds or watts make inf joules).
INT_BOUNDS = (-(2**63), 2**63 - 1)

#: A name that becomes part of a file or folder name (suite name, backend label): the run
#: folder's rule (harness.results) with room left for the timestamp prefix.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
SAFE_NAME_RULE = "letters, digits, '.', '_', '+' or '-', starting with a letter or digit, at most 100 characters"

#: device strings: a type and an optional index (cpu, cuda, cuda:1, mps, xpu:0, npu:3...)
DEVICE = re.compile(r"[a-z][a-z0-9_]{0,31}(:[0-9]{1,4})?")
#: the device types torch knows (c10::DeviceType names); torch.device() refuses others
TORCH_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu", "hip", "hpu", "npu", "mtia", "meta", "xla", "lazy", "ipu",
                      "ve", "fpga", "maia", "vulkan", "metal", "mkldnn", "opengl", "opencl", "ideep",
                      "privateuseone")


#: a device that is only a label in tables (llama.cpp's CUDA0, vulkan0, openvino:npu...)
DEVICE_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


def device_problem(value: str, types: tuple[str, ...] | None = None, label: bool = False) -> str | None:
    """Why `value` is not a device string (None: it is): `type` or `type:N`, the type one of
    `types` when given; with `label`, any short name of letters, digits, '_', '.', '-', ':'."""
    if label:
        if isinstance(value, str) and DEVICE_LABEL.fullmatch(value):
            return None
        return (f"expected a device label such as cpu, cuda:0 or vulkan0 (letters, digits, '_', '.', '-', ':'; "
                f"at most 64), got {short(value)}")
    if not isinstance(value, str) or not DEVICE.fullmatch(value):
        return (f"expected a device such as cpu, cuda or cuda:0 (a lower-case type, optionally ':' and "
                f"an index), got {short(value)}")
    kind = value.split(":")[0]
    if types is not None and kind not in types:
        return f"expected a device type among {', '.join(types)}, got {short(kind)}"
    return None


def name_problem(value: str) -> str | None:
    """Why `value` cannot name a file or folder (None: it can)."""
    if isinstance(value, str) and SAFE_NAME.fullmatch(value) and ".." not in value:
        return None
    return f"expected {SAFE_NAME_RULE} (it names files and folders), got {short(value)}"


def regular_file_problem(path: str, what: str, max_bytes: int | None) -> str | None:
    """Why `path` is not a readable regular file of at most `max_bytes` (None: it is).
    Opened with O_NONBLOCK and checked with fstat, so a FIFO or device never blocks the
    check, and what was checked is what was opened."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        return f"cannot read {what} {short(path)}: {e.strerror or e}"
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a device, pipe or socket"
        return f"{what} {short(path)} is {kind}, not a regular file"
    if max_bytes is not None and st.st_size > max_bytes:
        return f"{what} {short(path)} is too large ({st.st_size:,} bytes; the limit is {max_bytes:,})"
    return None


def short(v, n: int = 60) -> str:
    r = repr(v)
    return r if len(r) <= n else f"{r[:n]}... ({len(r)} characters)"


# --- YAML with line numbers -------------------------------------------------------------

#: Limits on every YAML file a user hands the harness (suites, claims, prices). A suite,
#: claims or prices file is a few kB; these leave two or three orders of magnitude of
#: room while keeping the worst case to about a second and tens of MB:
#: - MAX_YAML_BYTES: the file is read in one go, at most this many bytes + 1, so
#:   `harness run /dev/zero` or a huge file ends at once (non-regular files are refused).
#: - MAX_YAML_NODES: scalars, lists and mappings, counted after alias expansion. The
#:   checker, the line map and everything written later (run.json, the suite copy) walk
#:   the expanded tree, so a 524-byte nested-alias "billion laughs" must be refused while
#:   composing, before anything is built. A suite or claims file has tens to hundreds of
#:   nodes; PyYAML's pure-Python parser does ~25,000 nodes/s, so 20,000 keeps the worst
#:   file (no aliases, 1 MiB of `[1,1,1,...`) to about a second.
#: - MAX_YAML_CHARS: scalar text after alias expansion (one 1 MB string aliased
#:   20,000 times is only 20,001 nodes but 20 GB of text).
#: - MAX_YAML_DEPTH: lists/mappings nested inside each other; deeper than this is refused
#:   with the line instead of running into Python's recursion limit.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_NODES = 20_000
MAX_YAML_CHARS = 8 << 20
MAX_YAML_DEPTH = 64


class YamlDoc(typing.NamedTuple):
    path: Path
    data: Any
    lines: dict[str, int]  # key path (a.b[0].c) -> line
    duplicates: list[tuple[str, int]]  # keys given twice, with the line of the second


class _Refused(Exception):
    """A YAML file over a limit, or a value PyYAML cannot build: the message, located."""

    def __init__(self, line: int | None, msg: str):
        self.line, self.msg = line, msg
        super().__init__(msg)


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, counting while it composes: nesting depth, and a running total of
    nodes and scalar text with every alias counted as the whole subtree it stands for.
    Subtree sizes are memoized per node, so counting costs one step per node written, not
    per expansion, and the file is refused at the first node past a limit, before the rest
    is even parsed (PyYAML's pure-Python parser takes ~40 us a node)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._nodes = self._chars = 0  # running totals over the expanded document
        self._aliased = False  # an alias added to the totals (for the message)
        self._sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded nodes, expanded chars)
        self._node_path: dict[int, str] = {}  # filled by line_map, for errors while constructing

    def _count(self, nodes: int, chars: int, line: int) -> None:
        self._nodes += nodes
        self._chars += chars
        what = "aliases expand to" if self._aliased else "the file holds"
        if self._nodes > MAX_YAML_NODES:
            raise _Refused(line, f"not valid YAML: {what} more than {MAX_YAML_NODES:,} nodes "
                                 "(values, lists and mappings, counted after alias expansion)")
        if self._chars > MAX_YAML_CHARS:
            raise _Refused(line, f"not valid YAML: {what} more than {MAX_YAML_CHARS:,} characters of text "
                                 "(counted after alias expansion)")

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = self.anchors.get(event.anchor)
            if node is not None:  # else PyYAML reports the undefined alias
                if id(node) not in self._sizes:  # its anchor is still being composed
                    raise _Refused(event.start_mark.line + 1, f"not valid YAML: alias *{event.anchor} refers "
                                                              "to a node that contains it (a recursive alias)")
                self._aliased = True
                self._count(*self._sizes[id(node)], event.start_mark.line + 1)
            return super().compose_node(parent, index)
        event = self.peek_event()
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise _Refused(event.start_mark.line + 1, f"not valid YAML: nested more than {MAX_YAML_DEPTH} levels deep")
        nodes0, chars0 = self._nodes, self._chars
        self._count(1, len(getattr(event, "value", "") or ""), event.start_mark.line + 1)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        # everything counted since this node started is its expanded subtree
        self._sizes[id(node)] = (self._nodes - nodes0, self._chars - chars0)
        return node

    def construct_object(self, node, deep=False):
        if isinstance(node, yaml.ScalarNode) and "\0" in node.value and node.tag == "tag:yaml.org,2002:str":
            where = self._node_path.get(id(node))
            raise _Refused(node.start_mark.line + 1, f"{where or '(top level)'}: a NUL character (\\0) in a string")
        try:
            return super().construct_object(node, deep)
        except (_Refused, yaml.YAMLError):
            raise
        except Exception as e:  # noqa: BLE001 - PyYAML's constructors raise ValueError (a date
            # 2020-13-45, a 5000-digit integer), IndexError (`!!int ''`), OverflowError...
            where = self._node_path.get(id(node)) or "(top level)"
            tag = node.tag.rsplit(":", 1)[-1]
            raise _Refused(node.start_mark.line + 1,
                           f"{where}: not a valid {tag} value: {short(getattr(node, 'value', ''))} "
                           f"({type(e).__name__}: {e})") from None


def line_map(node: yaml.Node, path: str = "", out: dict | None = None, dups: list | None = None,
             node_path: dict | None = None) -> dict[str, int]:
    """key path -> line; duplicate keys (which YAML would silently let the last one win)
    are collected into `dups` as (path, line); `node_path` gets id(node) -> first key path.
    Walks the alias-expanded tree: callers bound its size first (read_yaml does)."""
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if node_path is not None:
        node_path.setdefault(id(node), path)
    if isinstance(node, yaml.MappingNode):
        seen: set = set()
        for k, v in node.value:
            # a complex key (`? [a]`) is refused when constructing; name it without its nodes' repr
            kv = k.value if isinstance(k, yaml.ScalarNode) else "(complex key)"
            key = f"{path}.{kv}" if path else str(kv)
            if kv in seen and dups is not None:
                dups.append((key, k.start_mark.line + 1))
            seen.add(kv)
            out[key] = k.start_mark.line + 1
            if node_path is not None:
                node_path.setdefault(id(k), key)
            line_map(v, key, out, dups, node_path)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            line_map(v, f"{path}[{i}]", out, dups, node_path)
    return out


def _read_bounded(path: Path, what: str) -> bytes:
    """At most MAX_YAML_BYTES of a regular file; a device, FIFO or directory is refused
    before it is read (O_NONBLOCK so that opening a FIFO does not wait for a writer)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise ConfigError([f"{path}: cannot read {what} file: {e.strerror or e}"]) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a device, pipe or socket"
            raise ConfigError([f"{path}: cannot read {what} file: {kind}, not a regular file"])
        if st.st_size > MAX_YAML_BYTES:
            raise ConfigError([f"{path}: {what} file too large ({st.st_size:,} bytes; the limit is "
                               f"{MAX_YAML_BYTES:,})"])
        chunks, got = [], 0
        while got <= MAX_YAML_BYTES:  # st_size may lie (a file still growing, /proc)
            b = os.read(fd, MAX_YAML_BYTES + 1 - got)
            if not b:
                break
            chunks.append(b)
            got += len(b)
        if got > MAX_YAML_BYTES:
            raise ConfigError([f"{path}: {what} file too large (more than {MAX_YAML_BYTES:,} bytes)"])
        return b"".join(chunks)
    except OSError as e:
        raise ConfigError([f"{path}: cannot read {what} file: {e.strerror or e}"]) from None
    finally:
        os.close(fd)


def read_yaml(path: str | Path, what: str) -> YamlDoc:
    """Parse a YAML file (safe loader only) with its line map; ConfigError names the file
    and line of anything unreadable. Bounded: see MAX_YAML_* above."""
    path = Path(path)
    raw = _read_bounded(path, what)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError([f"{path}:{line}: not UTF-8 text (byte {raw[e.start:e.start + 1]!r}); "
                           f"save the {what} file as UTF-8"]) from None
    loader = None
    try:
        loader = _BoundedLoader(text)  # its reader refuses unprintable characters at once
        node = loader.get_single_node()
        dups: list = []
        lines = line_map(node, dups=dups, node_path=loader._node_path) if node else {}
        data = loader.construct_document(node) if node is not None else None
    except _Refused as e:
        raise ConfigError([f"{path}:{e.line}: {e.msg}" if e.line else f"{path}: {e.msg}"]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError([f"{where}: not valid YAML: {getattr(e, 'problem', None) or e}"]) from None
    except RecursionError:  # not expected under MAX_YAML_DEPTH; kept so it can never be a traceback
        raise ConfigError([f"{path}: nested too deeply"]) from None
    finally:
        if loader is not None:
            loader.dispose()
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
            given = data  # messages quote the value as written (-1, not -1.0)
            if hint is float:
                try:
                    data = float(data)
                except OverflowError:  # an integer too large for a float
                    return self._bad(path, f"expected a number a float can hold (at most about 1.8e308), "
                                           f"got {short(data)}")
                if data != data:  # NaN passes every comparison below
                    return self._bad(path, f"expected a number, got {short(data)}")
                if not math.isfinite(data) and not rng:  # inf seconds or watts would become inf
                    # joules; with a range, the range's message says it
                    return self._bad(path, f"expected a finite number, got {short(data)}")
            if rng is None and hint is int:
                rng = INT_BOUNDS
            if rng and not (rng[0] <= data <= rng[1]):
                return self._bad(path, f"expected a value from {rng[0]:g} to {rng[1]:g}, got {short(given)}"
                                 if isinstance(rng[0], float) or isinstance(rng[1], float) else
                                 f"expected a value from {rng[0]} to {rng[1]}, got {short(given)}")
            try:
                return hint(data)
            except OverflowError:  # an integer too large for a float
                return self._bad(path, f"expected a number a float can hold (at most about 1.8e308), got {short(data)}")
        if hint is str:
            if isinstance(data, str) and "\0" in data:  # read_yaml refuses these too; build() gets here
                return self._bad(path, "a NUL character (\\0) in a string")
            if isinstance(data, str) and len(data) > MAX_STRING_CHARS:
                return self._bad(path, f"expected a string of at most {MAX_STRING_CHARS:,} characters, "
                                       f"got {len(data):,}")
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
            # "option 'x' must be ..." (the meters' checks) is about key x: report it there
            m = re.match(r"option '([A-Za-z_][A-Za-z0-9_]*)'", str(e))
            key = m.group(1) if m and m.group(1) in by_name else ""
            self.fail(f"{path}.{key}" if path and key else (key or path), str(e))
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
