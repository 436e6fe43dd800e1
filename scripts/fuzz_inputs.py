#!/usr/bin/env python3
"""Fuzz every input a user or another lab hands the harness, through the real CLI (issue 14).

    python scripts/fuzz_inputs.py [--cases 2800] [--seed 0] [--family suites ...] [--out DIR]
    python scripts/fuzz_inputs.py --replay DIR      # re-run saved failing cases
    make fuzz

Families: suites, names (--name), claims, prices, results (corrupted run folders through
report / compare / verify / run --resume), meterlogs (csv-log and ptdaemon-log), http
(raw sockets against a running `harness serve`), cli (random argv), faults (a real tiny
run killed by a signal, then resumed).

Cases are made by mutating valid seeds (the shipped suites, the example claims and prices,
a real results folder made once by a tiny run, tests/data/v1_runs): YAML-aware mutations
(wrong types, extreme numbers, huge strings, NUL, deep nesting, alias bombs, missing and
unknown keys, bad dates, lists for scalars), byte-level ones (truncate, flip, non-UTF-8),
JSONL ones (a line that is a list, a number, deep nesting, a torn line, a huge line,
wrong types per field) and filesystem ones (symlinks, FIFOs, directories for files,
missing files). The RNG is seeded, so a run is reproducible.

Each case runs in its own process: a fork server (this process, with the harness
imported) forks one child per case; the child redirects stdout/stderr to files and calls
harness.cli.main(argv) (or the same code path, for the few checks the CLI has no command
for), then os._exit(rc). The parent kills a child's process group after 30 s. At most
two children run at once (the development machine has two cores).

Outcomes per case: clean (exit 2, one `error:` block naming a file and a line, record,
key or byte), accepted (exit 0, or 1 where the command's own rules say so), traceback
("Traceback" on stderr, in a worker log, or an HTTP 500), hang (past 30 s), unlocated
(exit 2 without a location or with several error blocks), other (anything else: a wrong
exit status, a victim file written through a symlink, a resumed run that lost or
duplicated a cell, a non-finite figure labelled ok, a server that died).
"""
from __future__ import annotations

import argparse
import base64
import copy
import dataclasses
from dataclasses import asdict, dataclass, field
import json
import math
import os
from pathlib import Path
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

FAMILIES = ("suites", "names", "claims", "prices", "results", "meterlogs", "http", "cli", "faults")
#: share of --cases per family (the issue's 2,653 cases had ~700 corrupted result folders)
SHARES = {"suites": 0.24, "names": 0.05, "claims": 0.12, "prices": 0.09, "results": 0.24, "meterlogs": 0.12,
          "http": 0.08, "cli": 0.058, "faults": 0.002}
OUTCOMES = ("clean", "accepted", "traceback", "hang", "unlocated", "other")
BAD_OUTCOMES = ("traceback", "hang", "unlocated", "other")
TIMEOUT_S = 30.0
#: a case that is a real run (a log meter's run starts with a ~15 s clock signature; a fault
#: case is a run and its resume) may take longer on a loaded 2-core machine
REAL_RUN_TIMEOUT_S = 90.0
CHILD_MEMORY = 6 << 30  # address space per case (torch alone maps ~1.5 GB)

# --- cases -----------------------------------------------------------------------------------


@dataclass
class FileSpec:
    """One thing to create in the case's folder before it runs."""

    path: str  # relative to the case folder
    kind: str = "bytes"  # bytes | symlink | fifo | dir | copy (data: a path in this repo) | append
    data: bytes = b""  # bytes: the content; symlink: the target

    def to_json(self) -> dict:
        return {"path": self.path, "kind": self.kind, "data": base64.b64encode(self.data).decode()}

    @classmethod
    def from_json(cls, d: dict) -> "FileSpec":
        return cls(d["path"], d["kind"], base64.b64decode(d["data"]))


@dataclass
class Case:
    family: str
    index: int
    mutation: str  # what was done to the seed, for the table of failures
    mode: str = "cli"  # cli | plan | meterlog | meterrun | http | fault
    argv: list[str] = field(default_factory=list)
    files: list[FileSpec] = field(default_factory=list)
    subjects: list[str] = field(default_factory=list)  # names a located message may name
    whole_file: bool = False  # a file-level problem (missing, FIFO, too big): the file name is location enough
    accept_rc1: bool = False  # exit 1 is an accepted outcome (verify: a required claim refuted; run: all cells failed)
    victims: dict[str, str] = field(default_factory=dict)  # path -> content that must stay as it is
    resume_dir: Optional[str] = None  # run folder whose results.jsonl may only be appended to
    started_marker: Optional[str] = None  # stdout text that means "a server started": accepted, stop it
    http: bytes = b""  # raw request (http family)
    http_allow_close: bool = False  # the request ends early: closing without an answer is fine
    extra: dict = field(default_factory=dict)  # mode-specific settings

    def to_json(self) -> dict:
        d = asdict(self)
        d["files"] = [f.to_json() for f in self.files]
        d["http"] = base64.b64encode(self.http).decode()
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Case":
        d = dict(d)
        d["files"] = [FileSpec.from_json(f) for f in d["files"]]
        d["http"] = base64.b64decode(d["http"])
        return cls(**d)


@dataclass
class Result:
    case: Case
    outcome: str
    rc: Optional[int]
    seconds: float
    detail: str = ""
    stderr: str = ""
    stdout: str = ""


# --- seeds -----------------------------------------------------------------------------------

TINY_SUITE = """\
name: fuzzbase
description: tiny torch run, the seed results folder of the fuzzer
seed: 0
warmup: 0
repetitions: 3
timeout_s: 120
backends:
  - type: torch
    name: torch-cpu
    options: {device: cpu, threads: 1}
  - type: torch
    name: torch-b
    options: {device: cpu, threads: 1}
workloads:
  - model: tiny
    dtypes: [fp32]
    batch_sizes: [1, 2]
    prompt_lens: [8]
    gen_lens: [4]
energy: {idle_s: 0, min_window_s: 0, min_updates: 1}
accuracy: {enabled: false}
output: results
"""

#: one cell, for the runs a case really makes (names, meter logs, faults)
ONE_CELL_SUITE = """\
name: fuzzone
seed: 0
warmup: 0
repetitions: 2
timeout_s: 60
backends:
  - type: torch
    name: torch-cpu
    options: {device: cpu, threads: 1}
workloads:
  - model: tiny
    dtypes: [fp32]
    batch_sizes: [1]
    prompt_lens: [8]
    gen_lens: [4]
energy: {idle_s: 0, min_window_s: 0, min_updates: 1}
accuracy: {enabled: false}
output: results
"""

BASE_CLAIMS = """\
claims:
  - name: torch-b decodes as fast as torch-cpu
    metric: decode_tps
    subject: {backend: torch-b}
    baseline: {backend: torch-cpu}
    workload: {model: tiny, batch: 1, prompt_len: 8, gen_len: 4}
    at_least: 0.5
    required: false
  - name: best batch
    metric: prefill_tps
    subject: {backend: torch-b, device: cpu}
    baseline: {backend: torch-cpu}
    workload: {model: tiny, batch: best, prompt_len: 8, gen_len: 4, scenario: offline}
    factor: "at least 0.1x"
    required: true
    energy: gross
"""


def read_tree(folder: Path) -> dict[str, bytes]:
    """relative path -> bytes of every regular file under folder (lock files left out)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink() and p.name != ".harness.lock":
            out[str(p.relative_to(folder))] = p.read_bytes()
    return out


class Seeds:
    """Valid inputs the mutations start from."""

    def __init__(self, work: Path):
        self.work = work
        self.suites = {p.name: p.read_text() for p in sorted((ROOT / "workloads" / "suites").glob("*.yaml"))}
        self.suites["tiny.yaml"] = TINY_SUITE
        self.suites["one.yaml"] = ONE_CELL_SUITE
        self.claims = {"claims.example.yaml": (ROOT / "workloads" / "claims.example.yaml").read_text(),
                       "claims.base.yaml": BASE_CLAIMS}
        self.prices = {"prices.example.yaml": (ROOT / "workloads" / "prices.example.yaml").read_text()}
        self.runs: dict[str, dict[str, bytes]] = {}
        for d in sorted((ROOT / "tests" / "data" / "v1_runs").iterdir()):
            if d.is_dir():
                self.runs[d.name] = read_tree(d)
        self.base_run: Optional[dict[str, bytes]] = None
        self.lengths = (ROOT / "workloads" / "lengths" / "sharegpt_like.json")

    def make_base_run(self, server: "ForkServer", given: Optional[str] = None) -> None:
        """A real results folder made once by a tiny run (about 12 s on 2 cores), or `given`."""
        if given:
            self.base_run = read_tree(Path(given))
            self.runs["base"] = self.base_run
            return
        cache = self.work / "base-run"
        if not (cache / "results" / "base" / "results.jsonl").exists():
            shutil.rmtree(cache, ignore_errors=True)
            cache.mkdir(parents=True)
            case = Case("setup", 0, "base run", argv=["run", "tiny.yaml", "--name", "base", "--quiet"],
                        files=[FileSpec("tiny.yaml", data=TINY_SUITE.encode())])
            res = server.run_one(case, cache, keep=True, timeout=300)
            if res.rc != 0:
                raise SystemExit(f"fuzz: the tiny seed run failed (exit {res.rc}):\n{res.stderr[-3000:]}")
        self.base_run = read_tree(cache / "results" / "base")
        self.runs["base"] = self.base_run


# --- mutations: values -----------------------------------------------------------------------

def _paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys / indices) into a parsed YAML or JSON tree, the root included."""
    out = [prefix]
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out += _paths(v, prefix + (i,))
    return out


def _get(tree: Any, path: tuple) -> Any:
    for k in path:
        tree = tree[k]
    return tree


def _set(tree: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    _get(tree, path[:-1])[path[-1]] = value
    return tree


def _nested(depth: int, leaf: Any = 1, kind: str = "list") -> Any:
    v = leaf
    for _ in range(depth):
        v = [v] if kind == "list" else {"k": v}
    return v


def wrong_value(rng: random.Random, old: Any) -> tuple[str, Any]:
    """A value of another type or an extreme one (JSON/YAML-representable)."""
    choices = [
        ("string", "fuzz"), ("empty string", ""), ("list", [old] if old is not None else [1]), ("empty list", []),
        ("mapping", {"x": old}), ("empty mapping", {}), ("null", None), ("true", True), ("false", False),
        ("zero", 0), ("negative", -1), ("negative float", -0.5), ("huge int", 10 ** 30), ("2**63", 2 ** 63),
        ("2**64", 2 ** 64), ("1e308", 1e308), ("tiny float", 5e-324), ("float", 0.1),
        ("huge string", "x" * rng.choice([1000, 70_000, 300_000])), ("NUL string", "a\0b"),
        ("unicode string", "ünï\u202e\u200b😀"), ("deep list", _nested(rng.choice([20, 70, 200]))),
        ("deep mapping", _nested(rng.choice([20, 70, 200]), kind="dict")),
        ("path-like string", "../../../etc/passwd"), ("slash string", "a/b c"), ("newline string", "a\nb\r\nc"),
    ]
    return rng.choice(choices)


#: tokens written into YAML text as they are (not quoted): values PyYAML builds oddly or refuses
RAW_YAML = [
    "2024-02-30", "2024-13-45", "2024-01-01 25:61:00", "!!int ''", "!!int 'x'", "!!float 'nope'", "!!float ''",
    "!!binary '@@@'", "!!binary aGVsbG8=", "!!timestamp '2024-99-01'", "!!python/object/apply:os.system ['true']",
    "!!python/name:os.system", "!custom x", "!!set {a, b}", "!!omap [a: 1, b: 2]", "!!pairs [a: 1]", "!!null ''",
    "!!bool maybe", "!!str", "*undefined_alias", "{[1, 2]: 3}", "{? {a: 1} : 2}", ".nan", ".inf", "-.inf", ".NaN",
    "1.0e400", "-1.0e400", "0x7fffffffffffffffffff", "0o777777777777777777777", "0b1111", "1_000_000", "190:20:30",
    "~", "yes", "no", "on", "off", "'\\0'", '"\\0"', '"\\x00"', '"\\ud800"', '"\\uDFFF"', '"\\U0010FFFF"',
    "'" + "9" * 5000 + "'", "9" * 5000, "-" + "9" * 5000, "1e5", "1E-400", "'1e400'", "'nan'", "'inf'", "'-inf'",
    "&anchor [*anchor]", "&a {k: *a}", "[", "]", "{", "}", "'unterminated", '"bad \\q escape"', "@reserved",
    "`backtick", "|", ">", "- x", "? x", "!!merge <<", "!!map [1]", "!!seq {a: 1}", "!<tag:yaml.org,2002:int> x",
]


def yaml_dump(tree: Any) -> str:
    return yaml.safe_dump(tree, sort_keys=False, default_flow_style=False, allow_unicode=True, width=10 ** 9)


def alias_bomb(rng: random.Random) -> tuple[str, str]:
    """(anchors text to put first, the alias to use as a value): a billion-laughs of random size."""
    width, depth = rng.choice([(2, 4), (3, 6), (5, 6), (9, 9), (10, 10), (4, 16), (2, 30)])
    lines = ["_bomb:", f"  - &b0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, depth):
        lines.append(f"  - &b{i} [{', '.join([f'*b{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n", f"*b{depth - 1}"


def mutate_yaml(rng: random.Random, text: str) -> tuple[str, bytes]:
    """One mutation of a YAML document: (what, new bytes)."""
    kind = rng.choices(["tree", "raw", "bomb", "bytes", "dup", "merge", "aliases-ok"], [45, 20, 6, 18, 4, 3, 4])[0]
    if kind == "bytes":
        what, data = mutate_bytes(rng, text.encode())
        return what, data
    tree = yaml.safe_load(text)
    paths = _paths(tree)
    path = rng.choice(paths[1:] or paths)
    where = ".".join(map(str, path)) or "(top)"
    if kind == "tree":
        parent = _get(tree, path[:-1]) if path else None
        op = rng.choice(["value", "value", "value", "delete", "unknown", "list-for-scalar", "scalar-for-list",
                         "root"])
        if op == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
            return f"delete {where}", yaml_dump(tree).encode()
        if op == "unknown" and isinstance(parent, dict):
            k = str(path[-1])
            new = rng.choice([k + "s", k[:-1], k.upper(), "bogus_key", k.replace("_", "-"), "", "0"])
            parent[new if new not in parent else new + "_x"] = rng.choice([1, "x", None, [1]])
            return f"unknown key next to {where}", yaml_dump(tree).encode()
        old = _get(tree, path)
        if op == "list-for-scalar" and not isinstance(old, (list, dict)):
            tree = _set(tree, path, [old, old])
            return f"list for scalar at {where}", yaml_dump(tree).encode()
        if op == "scalar-for-list" and isinstance(old, (list, dict)):
            tree = _set(tree, path, rng.choice([1, "x", None, 0.5]))
            return f"scalar for collection at {where}", yaml_dump(tree).encode()
        if op == "root":
            root = rng.choice([[], "text", 42, None, [tree], {"wrapper": tree}])
            return f"root replaced by {type(root).__name__}", yaml_dump(root).encode()
        name, value = wrong_value(rng, old)
        tree = _set(tree, path, value)
        return f"{name} at {where}", yaml_dump(tree).encode()
    if kind == "raw":
        token = rng.choice(RAW_YAML)
        tree = _set(tree, path, "__FUZZ_RAW__")
        out = yaml_dump(tree).replace("__FUZZ_RAW__", token, 1)
        return f"raw {token[:40]!r} at {where}", out.encode()
    if kind == "bomb":
        anchors, alias = alias_bomb(rng)
        tree = _set(tree, path, "__FUZZ_RAW__")
        if not isinstance(tree, dict):
            return "alias bomb (whole file)", (anchors + f"x: {alias}\n").encode()
        out = yaml_dump(tree).replace("__FUZZ_RAW__", alias, 1)
        return f"alias bomb {alias} at {where}", (anchors + out).encode()
    if kind == "merge":
        out = yaml_dump(tree)
        token = rng.choice(["<<: 5", "<<: [1, 2]", "<<: *nope", "<<: {a: 1}", "<<: []"])
        return f"merge key {token!r}", (out + token + "\n").encode()
    if kind == "aliases-ok":
        # a legitimate small alias use: must still be accepted when the value is valid
        if isinstance(tree, dict) and tree:
            k = rng.choice(list(tree))
            out = yaml_dump({k: tree[k]}).replace(f"{k}:", f"{k}: &keep", 1)
            rest = {kk: v for kk, v in tree.items() if kk != k}
            return "anchor and alias", (out + yaml_dump(rest) + "_alias_copy: *keep\n").encode() if rest else out.encode()
        return "unchanged", text.encode()
    # dup: a top-level key given twice
    out = yaml_dump(tree)
    lines = out.splitlines()
    tops = [ln for ln in lines if ln and not ln.startswith((" ", "-", "#"))]
    if tops:
        return "duplicate key", (out + rng.choice(tops) + (" 1" if tops and tops[0].endswith(":") else "") + "\n").encode()
    return "unchanged", text.encode()


def mutate_bytes(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    op = rng.choice(["truncate", "flip", "insert", "non-utf8", "bom", "crlf", "tabs", "empty", "comment-only",
                     "over-1MiB", "repeat", "control", "nul", "latin1"])
    n = len(data)
    if op == "truncate":
        i = rng.randrange(n + 1)
        return f"truncated at byte {i}", data[:i]
    if op == "flip":
        b = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            if b:
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return "bits flipped", bytes(b)
    if op == "insert":
        i = rng.randrange(n + 1)
        junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        return f"random bytes at {i}", data[:i] + junk + data[i:]
    if op == "non-utf8":
        i = rng.randrange(n + 1)
        return f"\\xff\\xfe at {i}", data[:i] + b"\xff\xfe" + data[i:]
    if op == "bom":
        return "UTF-8 BOM", b"\xef\xbb\xbf" + data
    if op == "crlf":
        return "CRLF line ends", data.replace(b"\n", b"\r\n")
    if op == "tabs":
        return "tab indentation", data.replace(b"  ", b"\t")
    if op == "empty":
        return "empty file", b""
    if op == "comment-only":
        return "only a comment", b"# nothing here\n"
    if op == "over-1MiB":
        return "over 1 MiB", data + b"#" + b"x" * (1 << 20) + b"\n"
    if op == "repeat":
        i, j = sorted(rng.randrange(n + 1) for _ in range(2))
        return "chunk repeated", data[:j] + data[i:j] * rng.randint(2, 50) + data[j:]
    if op == "control":
        i = rng.randrange(n + 1)
        return "control characters", data[:i] + bytes([rng.choice([1, 7, 8, 0x1b, 0x7f, 0x85])]) + data[i:]
    if op == "nul":
        i = rng.randrange(n + 1)
        return f"NUL byte at {i}", data[:i] + b"\0" + data[i:]
    return "latin-1 byte", data.replace(b"e", b"\xe9", 1)


def fs_variant(rng: random.Random, name: str, valid: bytes) -> tuple[str, list[FileSpec], bool]:
    """A filesystem mutation of file `name`: (what, specs, whole_file)."""
    op = rng.choice(["symlink-ok", "dangling", "loop", "fifo", "dir", "missing", "dev-null"])
    if op == "symlink-ok":
        return "symlink to a valid file", [FileSpec("real-" + name, data=valid),
                                           FileSpec(name, "symlink", ("real-" + name).encode())], True
    if op == "dangling":
        return "dangling symlink", [FileSpec(name, "symlink", b"does-not-exist")], True
    if op == "loop":
        return "symlink loop", [FileSpec(name, "symlink", name.encode())], True
    if op == "fifo":
        return "FIFO", [FileSpec(name, "fifo")], True
    if op == "dir":
        return "directory", [FileSpec(name, "dir")], True
    if op == "missing":
        return "missing", [], True
    return "symlink to /dev/null", [FileSpec(name, "symlink", b"/dev/null")], True


# --- families ---------------------------------------------------------------------------------

def gen_yaml_file(rng: random.Random, seeds: dict[str, str], name: str) -> tuple[str, list[FileSpec], bool, str]:
    """(mutation, files, whole_file, seed name) for one YAML input named `name`."""
    seed_name = rng.choice(sorted(seeds))
    text = seeds[seed_name]
    if rng.random() < 0.06:
        what, files, whole = fs_variant(rng, name, text.encode())
        return what, files, whole, seed_name
    if rng.random() < 0.12:  # two mutations at once
        w1, d1 = mutate_yaml(rng, text)
        try:
            # never yaml.safe_load a mutated file here: an alias bomb would expand in this process
            if "bomb" in w1 or "raw" in w1 or len(d1) > 200_000:
                raise ValueError("not chained")
            w2, d2 = mutate_yaml(rng, d1.decode("utf-8"))
            return f"{w1}; {w2}", [FileSpec(name, data=d2)], False, seed_name
        except Exception:  # noqa: BLE001 - the first mutation already broke the YAML: keep it
            return w1, [FileSpec(name, data=d1)], False, seed_name
    what, data = mutate_yaml(rng, text)
    whole = what in ("empty file", "over 1 MiB", "only a comment") or what.startswith("root replaced")
    return what, [FileSpec(name, data=data)], whole, seed_name


def family_suites(rng: random.Random, seeds: Seeds, n: int) -> list[Case]:
    out = []
    for i in range(n):
        what, files, whole, seed = gen_yaml_file(rng, seeds.suites, "suite.yaml")
        if rng.random() < 0.03:
            out.append(Case("suites", i, "/dev/zero as the suite", mode="plan", argv=["/dev/zero"],
                            subjects=["/dev/zero"], whole_file=True))
            continue
        out.append(Case("suites", i, f"{seed}: {what}", mode="plan", argv=["suite.yaml"], files=files,
                        subjects=["suite.yaml"], whole_file=whole))
    return out


def random_name(rng: random.Random) -> tuple[str, str]:
    choices = [
        ("ok", "run-1"), ("ok dots", "a.b_c-1"), ("128 chars", "a" * 128), ("129 chars", "a" * 129),
        ("4096 chars", "a" * 4096), ("slash", "a/b"), ("dotdot", ".."), ("dot", "."), ("leading dot", ".hidden"),
        ("traversal", "../escape"), ("absolute", "/tmp/x"), ("space", "a b"), ("empty", ""), ("NUL", "a\0b"),
        ("newline", "a\nb"), ("unicode", "ünï"), ("emoji", "😀"), ("dash first", "-x"), ("tilde", "~"),
        ("star", "*"), ("backslash", "a\\b"), ("colon", "a:b"), ("percent", "%s%n"), ("dotdot inside", "a..b"),
        ("trailing dot", "a."), ("surrogate", "a\udcff"), ("rtl", "a\u202eb"), ("long unicode", "é" * 100),
        ("control", "a\x1bb"), ("existing base", "base"), ("lock name", ".harness.lock"),
    ]
    if rng.random() < 0.3:
        alphabet = "aZ09._-/ \\:*?\"<>|\0\n\té😀~$`'"
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        return "random characters", s
    return rng.choice(choices)


def family_names(rng: random.Random, seeds: Seeds, n: int) -> list[Case]:
    out = []
    real_left = max(2, n // 25)  # a few accepted names make a real run (~6 s each)
    for i in range(n):
        what, name = random_name(rng)
        files = [FileSpec("one.yaml", data=ONE_CELL_SUITE.encode())]
        if what == "existing base" and seeds.base_run:
            files += [FileSpec(f"results/base/{k}", data=v) for k, v in seeds.base_run.items()]
        real = real_left > 0 and rng.random() < 0.25 and "\0" not in name
        if real:
            real_left -= 1
            out.append(Case("names", i, f"--name {what} (real run)", argv=["run", "one.yaml", "--name", name,
                                                                          "--quiet"],
                            files=files, subjects=["--name", "run name", name[:20]], accept_rc1=False,
                            extra={"timeout": REAL_RUN_TIMEOUT_S}))
        else:
            out.append(Case("names", i, f"--name {what}", mode="plan", argv=["one.yaml"], files=files,
                            subjects=["--name", "run name", "results"], extra={"name": name}))
    return out


def family_claims(rng: random.Random, seeds: Seeds, n: int) -> list[Case]:
    out = []
    for i in range(n):
        what, files, whole, seed = gen_yaml_file(rng, seeds.claims, "claims.yaml")
        files += run_files("run", seeds.base_run)
        out.append(Case("claims", i, f"{seed}: {what}", argv=["verify", "claims.yaml", "run", "--markdown", "v.md"],
                        files=files, subjects=["claims.yaml"], whole_file=whole, accept_rc1=True))
    return out


def family_prices(rng: random.Random, seeds: Seeds, n: int) -> list[Case]:
    out = []
    for i in range(n):
        what, files, whole, seed = gen_yaml_file(rng, seeds.prices, "prices.yaml")
        files += run_files("run", seeds.base_run)
        out.append(Case("prices", i, f"{seed}: {what}", argv=["report", "run", "--prices", "prices.yaml",
                                                               "--out", "rep"],
                        files=files, subjects=["prices.yaml"], whole_file=whole))
    return out


def run_files(folder: str, tree: dict[str, bytes]) -> list[FileSpec]:
    return [FileSpec(f"{folder}/{k}", data=v) for k, v in tree.items()]


def mutate_record(rng: random.Random, rec: dict) -> tuple[str, Any]:
    """A JSON record with one field changed (or a whole line replaced): (what, object or raw bytes)."""
    op = rng.choices(["field", "delete", "unknown", "line", "version", "cell_id", "number"], [50, 8, 5, 12, 6, 8, 11])[0]
    rec = copy.deepcopy(rec)
    if op == "line":
        name, v = rng.choice([("list", [1, 2]), ("number", 42), ("string", "x"), ("null", None), ("true", True),
                              ("empty object", {}), ("deep list", _nested(rng.choice([65, 200, 5000]))),
                              ("deep object", _nested(rng.choice([65, 200]), kind="dict"))])
        return f"line is a {name}", v
    if op == "version":
        v = rng.choice([999, 0, -1, "1", None, 1.5, 2 ** 70, [2]])
        rec["schema_version"] = v
        return f"schema_version {v!r}", rec
    if op == "cell_id":
        v = rng.choice(["../../../escape", "a" * 5000, "", "x/../../y", "/abs/path", "a\0b", "<script>x</script>",
                        "\udcff", 5, None, ["a"]])
        rec["cell_id"] = v
        return f"cell_id {str(v)[:30]!r}", rec
    paths = [p for p in _paths(rec) if p]
    path = rng.choice(paths)
    where = ".".join(map(str, path))
    if op == "delete":
        parent = _get(rec, path[:-1])
        if isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent.pop(path[-1])
        return f"delete {where}", rec
    if op == "unknown":
        parent = _get(rec, path[:-1])
        if isinstance(parent, dict):
            parent["fuzz_unknown"] = {"x": 1}
        return f"unknown key beside {where}", rec
    if op == "number":
        v = rng.choice([float("nan"), float("inf"), float("-inf"), -1, 0, 10 ** 400, 1e308, -1e308, 2 ** 63, True])
        _set(rec, path, v)
        return f"number {str(v)[:20]} at {where}", rec
    name, v = wrong_value(rng, _get(rec, path))
    _set(rec, path, v)
    return f"{name} at {where}", rec


def mutate_jsonl(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    lines = data.splitlines(keepends=True)
    op = rng.choices(["record", "torn-last", "torn-middle", "huge", "dup", "shuffle", "empty-lines", "bytes",
                      "surrogate", "crlf", "bom", "nonutf8-line", "truncate-all", "extra-big-int"],
                     [45, 5, 5, 2, 5, 3, 3, 10, 3, 3, 3, 5, 3, 5])[0]
    if not lines:
        return "empty", b""
    i = rng.randrange(len(lines))
    if op == "record":
        try:
            rec = json.loads(lines[i])
        except ValueError:
            rec = {}
        what, new = mutate_record(rng, rec)
        try:
            lines[i] = json.dumps(new).encode() + b"\n"  # NaN / Infinity as JSON writes them
        except RecursionError:  # deeper than json.dumps goes: write the brackets by hand
            lines[i] = b"[" * 5000 + b"1" + b"]" * 5000 + b"\n"
            what += " (5000 deep)"
        return f"line {i + 1}: {what}", b"".join(lines)
    if op == "torn-last":
        last = lines[-1]
        lines[-1] = last[: rng.randrange(1, max(2, len(last) - 1))]
        return "torn last line", b"".join(lines)
    if op == "torn-middle":
        lines[i] = lines[i][: rng.randrange(1, max(2, len(lines[i]) - 1))] + b"\n"
        return f"torn line {i + 1} (not last)", b"".join(lines)
    if op == "huge":
        big = rng.choice([2 << 20, 17 << 20])
        rec = json.loads(lines[i])
        rec["warnings"] = ["w" * big]
        lines[i] = json.dumps(rec).encode() + b"\n"
        return f"line {i + 1} of {big >> 20} MiB", b"".join(lines)
    if op == "dup":
        lines.insert(i, lines[i] if lines[i].endswith(b"\n") else lines[i] + b"\n")
        return f"line {i + 1} twice", b"".join(lines)
    if op == "shuffle":
        rng.shuffle(lines)
        lines = [ln if ln.endswith(b"\n") else ln + b"\n" for ln in lines]
        return "lines shuffled", b"".join(lines)
    if op == "empty-lines":
        lines.insert(i, b"\n" * rng.randint(1, 3))
        return "empty lines", b"".join(lines)
    if op == "surrogate":
        lines[i] = lines[i].replace(b'"torch-cpu"', b'"torch-\\ud800cpu"', 1).replace(b'"tiny"', b'"\\udfff"', 1)
        return f"lone surrogate escapes on line {i + 1}", b"".join(lines)
    if op == "crlf":
        return "CRLF", data.replace(b"\n", b"\r\n")
    if op == "bom":
        return "BOM", b"\xef\xbb\xbf" + data
    if op == "nonutf8-line":
        lines[i] = lines[i].replace(b"tiny", b"t\xffny", 1)
        return f"non-UTF-8 byte on line {i + 1}", b"".join(lines)
    if op == "truncate-all":
        return "whole file truncated to 0", b""
    if op == "extra-big-int":
        lines[i] = lines[i].replace(b'"batch": 1', b'"batch": 1' + b"0" * 5000, 1)
        return f"5000-digit integer on line {i + 1}", b"".join(lines)
    what, new = mutate_bytes(rng, data)
    return what, new


def mutate_run_json(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    if rng.random() < 0.3:
        return mutate_bytes(rng, data)
    try:
        obj = json.loads(data)
    except ValueError:
        obj = {}
    op = rng.choice(["root", "field", "field", "field", "deep"])
    if op == "root":
        v = rng.choice([[], "x", 1, None, True, [obj]])
        return f"run.json root is {type(v).__name__}", json.dumps(v).encode()
    if op == "deep":
        obj["fuzz"] = _nested(rng.choice([65, 300, 20000]))
        try:
            return "run.json deep nesting", json.dumps(obj).encode()
        except RecursionError:
            return "run.json deep nesting (raw)", b'{"fuzz": ' + b"[" * 20000 + b"]" * 20000 + b"}"
    paths = [p for p in _paths(obj) if p] or [()]
    path = rng.choice(paths)
    name, v = wrong_value(rng, _get(obj, path) if path else obj)
    obj = _set(obj, path, v)
    return f"run.json {name} at {'.'.join(map(str, path))}", json.dumps(obj).encode()


def corrupt_run(rng: random.Random, tree: dict[str, bytes], folder: str) -> tuple[str, list[FileSpec], dict, bool]:
    """A run folder with one or two corruptions: (what, files, victims, whole_file)."""
    tree = dict(tree)
    victims: dict[str, str] = {}
    extra: list[FileSpec] = []
    whole = False
    target = rng.choices(["results.jsonl", "run.json", "suite.yaml", "timeline", "fs", "symlink-out"],
                         [55, 18, 5, 7, 8, 7])[0]
    if target == "results.jsonl" and "results.jsonl" in tree:
        what, tree["results.jsonl"] = mutate_jsonl(rng, tree["results.jsonl"])
        whole = what in ("empty", "whole file truncated to 0") or "MiB" in what
    elif target == "run.json":
        what, tree["run.json"] = mutate_run_json(rng, tree["run.json"])
        whole = what.startswith("run.json root") or what in ("empty file", "over 1 MiB")
    elif target == "suite.yaml" and "suite.yaml" in tree:
        w, tree["suite.yaml"] = mutate_yaml(rng, tree["suite.yaml"].decode("utf-8"))
        what = f"suite.yaml: {w}"
    elif target == "timeline" and any(k.startswith("timelines/") for k in tree):
        k = rng.choice([k for k in tree if k.startswith("timelines/")])
        op = rng.choice(["bytes", "cells"])
        if op == "bytes":
            w, tree[k] = mutate_bytes(rng, tree[k])
        else:
            lines = tree[k].decode("utf-8", "replace").splitlines()
            if len(lines) > 1:
                j = rng.randrange(1, len(lines))
                cells = lines[j].split(",")
                c = rng.randrange(len(cells))
                cells[c] = rng.choice(["nan", "inf", "-1", "x", "", "1e400", "9" * 400, '"'])
                lines[j] = ",".join(cells)
            tree[k] = ("\n".join(lines) + "\n").encode()
            w = "cell value"
        what = f"{k}: {w}"
    elif target == "symlink-out":
        victim = "victim.txt"
        victims[victim] = "precious\n"
        extra.append(FileSpec(victim, data=b"precious\n"))
        link = rng.choice(["report", "verdicts-claims.md", "report/report.md", "results.jsonl", "cmp.md"])
        if link == "report":
            extra.append(FileSpec("victimdir", "dir"))
            extra.append(FileSpec(f"{folder}/report", "symlink", b"../victimdir"))
            victims["victimdir/report.md"] = ""  # must not appear
        elif link == "report/report.md":
            extra.append(FileSpec(f"{folder}/report", "dir"))
            extra.append(FileSpec(f"{folder}/report/report.md", "symlink", b"../../victim.txt"))
        elif link == "results.jsonl":
            tree.pop("results.jsonl", None)
            extra.append(FileSpec(f"{folder}/results.jsonl", "symlink", b"../victim.txt"))
        else:
            extra.append(FileSpec(f"{folder}/{link}", "symlink", b"../victim.txt"))
        what, whole = f"{link} is a symlink out of the folder", True
    else:
        name = rng.choice(["results.jsonl", "run.json", "suite.yaml", "timelines"])
        op = rng.choice(["missing", "dir", "fifo", "dangling", "devzero"])
        if name == "timelines":
            for k in [k for k in tree if k.startswith("timelines/")]:
                del tree[k]
            if op == "dir":
                op = "missing"
        else:
            tree.pop(name, None)
        if op == "dir":
            extra.append(FileSpec(f"{folder}/{name}", "dir"))
        elif op == "fifo":
            extra.append(FileSpec(f"{folder}/{name}", "fifo"))
        elif op == "dangling":
            extra.append(FileSpec(f"{folder}/{name}", "symlink", b"nowhere"))
        elif op == "devzero":
            extra.append(FileSpec(f"{folder}/{name}", "symlink", b"/dev/zero"))
        what, whole = f"{name}: {op}", True
    return what, run_files(folder, tree) + extra, victims, whole


def family_results(rng: random.Random, seeds: Seeds, n: int) -> list[Case]:
    out = []
    resume_left = max(2, n // 30)
    claims = FileSpec("claims.yaml", data=BASE_CLAIMS.encode())
    for i in range(n):
        seed = "base" if rng.random() < 0.8 else rng.choice(sorted(seeds.runs))
        tree = seeds.runs[seed]
        what, files, victims, whole = corrupt_run(rng, tree, "run")
        cmd = rng.choices(["report", "compare", "verify", "resume"], [22, 28, 43, 7])[0]
        subjects = ["results.jsonl", "run.json", "suite.yaml", "timelines", "run", "report", "verdicts", "cmp.md",
                    "give another run folder"]  # compare of runs with one configuration between them: a usage error
        accept_rc1 = False
        resume_dir = None
        if cmd == "resume":
            if resume_left <= 0 or seed != "base":
                cmd = "verify"
            else:
                resume_left -= 1
                # a resume only has work when a cell is missing: drop one finished line too
                # (which cell is random); then the runner may only append
                specs = []
                for f in files:
                    if f.path == "run/results.jsonl" and f.kind == "bytes" and rng.random() < 0.6:
                        lines = f.data.splitlines(keepends=True)
                        if len(lines) > 1:
                            del lines[rng.randrange(len(lines))]
                            f = FileSpec(f.path, data=b"".join(lines))
                            what += "; one line dropped"
                    specs.append(f)
                files = specs
                resume_dir = "run"
                argv = ["run", "--resume", "run", "--quiet"]
                accept_rc1 = True  # every cell failed: exit 1 is the CLI's rule
        if cmd == "report":
            argv = ["report", "run"] + (["--out", "rep"] if rng.random() < 0.5 else [])
        elif cmd == "compare":
            other = rng.choice(sorted(seeds.runs))
            files += run_files("other", seeds.runs[other])
            argv = ["compare", "run", "other"] if rng.random() < 0.7 else ["compare", "run"]
            if rng.random() < 0.4:
                argv += ["--markdown", "run/cmp.md"]
            if rng.random() < 0.3:
                argv += ["--same-backend"]
        elif cmd == "verify":
            files.append(claims)
            argv = ["verify", "claims.yaml", "run"]
            accept_rc1 = True
        out.append(Case("results", i, f"{seed}: {what} [{cmd}]", argv=argv, files=files, subjects=subjects,
                        whole_file=whole, accept_rc1=accept_rc1, victims=victims, resume_dir=resume_dir,
                        extra={"timeout": REAL_RUN_TIMEOUT_S} if resume_dir else {}))
    return out


# meter logs ---------------------------------------------------------------------------------------

def csv_log(rng: random.Random, t0: float, n: int, period: float) -> bytes:
    rows = ["timestamp,watts"]
    for k in range(n):
        rows.append(f"{t0 + k * period:.3f},{100 + 10 * math.sin(k / 5) + rng.random():.2f}")
    return ("\n".join(rows) + "\n").encode()


def ptd_log(rng: random.Random, t0: float, n: int, period: float) -> bytes:
    rows = []
    for k in range(n):
        t = time.localtime(t0 + k * period)
        ms = int(((t0 + k * period) % 1) * 1000)
        stamp = time.strftime("%m-%d-%Y %H:%M:%S", t) + f".{ms:03d}"
        rows.append(f"Time,{stamp},Watts,{100 + rng.random():.3f},Volts,229.8,Amps,0.44,PF,0.99,Mark,run")
    return ("\n".join(rows) + "\n").encode()


def mutate_log(rng: random.Random, data: bytes, kind: str) -> tuple[str, bytes]:
    lines = data.splitlines(keepends=True)
    op = rng.choices(["cell", "bytes", "header", "order", "huge-line", "many-lines", "empty", "only-header",
                      "blank", "dup", "torn"], [35, 20, 10, 6, 3, 2, 4, 4, 5, 5, 6])[0]
    if op == "cell" and len(lines) > 1:
        j = rng.randrange(1 if kind == "csv-log" else 0, len(lines))
        sep = b","
        cells = lines[j].rstrip(b"\n").split(sep)
        c = rng.randrange(len(cells))
        v = rng.choice([b"nan", b"inf", b"-inf", b"-1", b"", b"x", b"1e400", b"9" * 400, b"0", b"1e-320", b'"',
                        b"2024-13-45T99:99:99", b"-5e10", b"1e20", b"\xff", b" ", b"NaN", b"+1", b"0x10", b"1_0"])
        cells[c] = v
        lines[j] = sep.join(cells) + b"\n"
        return f"line {j + 1} column {c + 1} = {v[:12]!r}", b"".join(lines)
    if op == "header" and kind == "csv-log":
        lines[0] = rng.choice([b"time,power\n", b"timestamp\n", b"watts,timestamp\n", b"\n", b"timestamp,watts,watts\n",
                               b"timestamp;watts\n", b"\xff\xfe\n", b'"timestamp","watts"\n'])
        return f"header {lines[0][:20]!r}", b"".join(lines)
    if op == "order" and len(lines) > 3:
        j = rng.randrange(1, len(lines) - 1)
        lines[j], lines[j + 1] = lines[j + 1], lines[j]
        return f"lines {j + 1} and {j + 2} swapped (time goes back)", b"".join(lines)
    if op == "huge-line":
        j = rng.randrange(len(lines))
        lines.insert(j, b"1," + b"9" * rng.choice([10_000, 2_000_000]) + b"\n")
        return f"huge line {j + 1}", b"".join(lines)
    if op == "many-lines":
        return "200k lines", data + data.splitlines(keepends=True)[-1] * 200_000
    if op == "empty":
        return "empty log", b""
    if op == "only-header":
        return "header only", lines[0] if lines else b""
    if op == "blank":
        j = rng.randrange(len(lines) + 1)
        lines.insert(j, rng.choice([b"\n", b"   \n", b",\n", b"#comment\n"]))
        return f"blank-ish line {j + 1}", b"".join(lines)
    if op == "dup" and lines:
        j = rng.randrange(len(lines))
        lines.insert(j, lines[j])
        return f"line {j + 1} twice", b"".join(lines)
    if op == "torn" and lines:
        lines[-1] = lines[-1][: max(1, len(lines[-1]) // 2)]
        return "torn last line", b"".join(lines)
    return mutate_bytes(rng, data)


def meter_options(rng: random.Random, kind: str, path: str) -> tuple[str, dict]:
    opts: dict[str, Any] = {"path": path, "settle_s": 0, "tz": "UTC"}
    what = "default options"
    if rng.random() < 0.35:
        key = rng.choice(["columns", "timestamp_format", "delimiter", "watts_scale", "clock_offset_s", "tz",
                          "period_s", "max_gap_s", "skip_malformed", "sample_covers", "settle_s", "name", "scope"]
                         if kind == "csv-log" else
                         ["clock_offset_s", "tz", "period_s", "max_gap_s", "skip_malformed", "sample_covers",
                          "settle_s", "name", "scope"])
        v = rng.choice([0, -1, float("inf"), float("nan"), 1e300, -1e300, "", "x", None, [1], {"a": 1}, True,
                        10 ** 30, "auto", "%Y", "epoch_ms", {"timestamp": "nope", "watts": "watts"},
                        {"timestamp": 0, "watts": 1}, {"timestamp": 5, "watts": 9}, ";", "\t", ",,", "Mars/Olympus"])
        opts[key] = v
        what = f"{key}={str(v)[:20]}"
    if rng.random() < 0.3:
        opts["skip_malformed"] = True
        what += ", skip_malformed"
    return what, opts


def family_meterlogs(rng: random.Random, seeds: Seeds, n: int) -> list[Case]:
    out = []
    real_left = max(2, n // 15)
    for i in range(n):
        kind = rng.choice(["csv-log", "ptdaemon-log"])
        name = "power.csv" if kind == "csv-log" else "ptd.log"
        real = real_left > 0 and rng.random() < 0.1
        # the log covers the case's time: "now" plus the window a run or the reader will ask for
        t0 = time.time() - 5 if not real else None
        data = (csv_log if kind == "csv-log" else ptd_log)(rng, 0.0 if t0 is None else t0, 60, 0.25)
        what, data = mutate_log(rng, data, kind)
        files = [FileSpec(name, data=data)]
        whole = what in ("empty log", "header only")
        if rng.random() < 0.05:
            w, files, whole = fs_variant(rng, name, data)
            what = w
        owhat, opts = meter_options(rng, kind, name)
        meter = {"type": kind, **opts}
        if real:
            real_left -= 1
            # the log is written by the child right before the run, around its own clock
            suite = yaml.safe_load(ONE_CELL_SUITE)
            suite["meters"] = [meter]
            suite["energy"] = {"idle_s": 0.2, "min_window_s": 0.2, "min_updates": 2}
            files.append(FileSpec("meter.yaml", data=yaml_dump(suite).encode()))
            out.append(Case("meterlogs", i, f"{kind} {what}; {owhat} (real run)", mode="meterrun",
                            argv=["run", "meter.yaml", "--name", "m", "--quiet"], files=files,
                            subjects=[name, "meter.yaml"], whole_file=whole, accept_rc1=True,
                            extra={"kind": kind, "mutation_seed": rng.randrange(1 << 30), "log": name,
                                   "timeout": REAL_RUN_TIMEOUT_S}))
        else:
            out.append(Case("meterlogs", i, f"{kind} {what}; {owhat}", mode="meterlog", files=files,
                            subjects=[name, "meter.yaml"], whole_file=whole, extra={"meter": meter}))
    return out


# http ------------------------------------------------------------------------------------------

def http_request(rng: random.Random) -> tuple[str, bytes, bool]:
    """(what, raw request, may close without answer)."""
    def req(method="POST", path="/v1/completions", headers=None, body=b"", version="HTTP/1.1", length=True):
        h = {"Host": "localhost", "Connection": "close"}
        h.update(headers or {})
        if length and method == "POST" and "Content-Length" not in h:
            h["Content-Length"] = str(len(body))
        head = f"{method} {path} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
        return head.encode("utf-8", "surrogateescape") + body

    good = {"prompt": [1, 2, 3], "max_tokens": 2}
    op = rng.choices(["body-field", "body-json", "request-line", "headers", "length", "path", "ok"],
                     [35, 20, 10, 12, 10, 8, 5])[0]
    if op == "body-field":
        body = dict(good)
        key = rng.choice(["prompt", "max_tokens", "min_tokens", "stream", "model", "ignore_eos", "return_token_ids",
                          "temperature", "prompt", "max_tokens"])
        v = rng.choice([None, "x", "", [], {}, [[]], [""], ["a", "b"], [1.5], [-1], [10 ** 9], [2 ** 63], [True],
                        -1, 0, 1.5, 2 ** 31, 2 ** 31 + 1, 2 ** 63, 10 ** 400, True, "5", [0] * 600,
                        "a" * 600, _nested(rng.choice([10, 63, 65, 1000])), float("nan"), float("inf"), 1e400])
        if key == "max_tokens" and isinstance(v, int) and not isinstance(v, bool) and 0 < v < 2 ** 31:
            v = rng.choice([2 ** 31 - 1, 600, 513])  # within the API's range, past the context
        body[key] = v
        try:
            raw = json.dumps(body).encode()
        except (RecursionError, ValueError):
            raw = b'{"prompt": [1], "max_tokens": ' + b"[" * 5000 + b"]" * 5000 + b"}"
        if rng.random() < 0.3:
            body["stream"] = True
            try:
                raw = json.dumps(body).encode()
            except (RecursionError, ValueError):
                pass
        return f"{key}={_short(v)}", req(body=raw), False
    if op == "body-json":
        raw, what = rng.choice([
            (b"", "empty body"), (b"{", "torn JSON"), (b"[1,2]", "a list"), (b"42", "a number"), (b"null", "null"),
            (b'"s"', "a string"), (b"\xff\xfe", "not UTF-8"), (b"[" * 100_000 + b"]" * 100_000, "deep list"),
            (b'{"a":' * 70 + b"1" + b"}" * 70, "deep object"), (b'{"prompt": [1], "max_tokens": 2}' * 2, "two objects"),
            (b"{'prompt': [1]}", "single quotes"), (b'{"prompt": "\\ud800"}', "lone surrogate"),
            (b'{"prompt": [1], "max_tokens": 2, "max_tokens": 3}', "duplicate key"), (b"NaN", "NaN"),
            (b'{"prompt": [1],}', "trailing comma"), (b"\x00" * 100, "NULs"), (b'{"prompt": "' + b"a" * 900_000 + b'"}',
                                                                                "900 kB prompt"),
        ])
        path = rng.choice(["/v1/completions", "/tokenize"])
        return f"{what} to {path}", req(path=path, body=raw), False
    if op == "request-line":
        line = rng.choice([b"GARBAGE\r\n\r\n", b"\r\n\r\n", b"GET\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
                           b"GET / HTTP/1.1 extra\r\n\r\n", b"G\x00T / HTTP/1.1\r\n\r\n", b"GET /" + b"a" * 70_000 +
                           b" HTTP/1.1\r\n\r\n", b"\xff\xfe / HTTP/1.1\r\n\r\n", b"BREW /v1/models HTTP/1.1\r\n\r\n",
                           b"get /v1/models http/1.1\r\n\r\n", b"GET /v1/models HTTP/1.1\n\n",
                           b"GET /v1/models\r\n\r\n", b"DELETE /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
                           b"PUT /v1/completions HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
                           b"OPTIONS * HTTP/1.1\r\n\r\n", b"HEAD /v1/models HTTP/1.1\r\n\r\n"])
        return f"request line {line[:24]!r}", line, False
    if op == "headers":
        h = rng.choice([
            {"X-Big": "a" * 70_000}, {f"X-{k}": "v" for k in range(150)}, {"X-Many": "a" * 1000, "X-M2": "b" * 40_000},
            {"Transfer-Encoding": "chunked"}, {"Content-Type": "text/plain"}, {"Authorization": "Bearer \xff"},
            {"Bad Header": "x"}, {"X-Nul": "a\0b"}, {"Expect": "100-continue"}, {"Host": ""},
        ])
        body = json.dumps(good).encode()
        if "Transfer-Encoding" in h:
            return "chunked body", req(headers=h, body=b"5\r\nhello\r\n0\r\n\r\n", length=False), False
        return f"headers {list(h)[0][:20]}", req(headers=h, body=body), False
    if op == "length":
        body = json.dumps(good).encode()
        v = rng.choice(["-1", "abc", "1e3", "99999999999999999999999", "5, 5", " 7", "0x10", "", "1" * 400,
                        str(len(body) + 50), str(max(1, len(body) - 5)), "2000000", "+5"])
        close = v == str(len(body) + 50)  # the body ends early: the client closes its side
        return f"Content-Length {v[:24]!r}", req(headers={"Content-Length": v}, body=body), close
    if op == "path":
        p = rng.choice(["/", "/v1/models", "/health", "/stats", "/nope", "/v1/completions?x=1", "/%00", "/" + "a" * 5000,
                        "//v1/completions", "/v1/../v1/models", "http://evil/v1/models", "*", "/v1/chat/completions",
                        "/metrics"])
        method = rng.choice(["GET", "POST"])
        body = json.dumps(good).encode() if method == "POST" else b""
        return f"{method} {p[:24]}", req(method=method, path=p, body=body), False
    body = dict(good)
    body["stream"] = rng.random() < 0.5
    return f"valid request stream={body['stream']}", req(body=json.dumps(body).encode()), False


def _short(v: Any, n: int = 24) -> str:
    try:
        return str(v)[:n]
    except RecursionError:
        return f"(nested {type(v).__name__})"


def family_http(rng: random.Random, seeds: Seeds, n: int) -> list[Case]:
    out = []
    for i in range(n):
        what, raw, close = http_request(rng)
        out.append(Case("http", i, what, mode="http", http=raw, http_allow_close=close))
    return out


# cli -------------------------------------------------------------------------------------------

def family_cli(rng: random.Random, seeds: Seeds, n: int) -> list[Case]:
    junk = ["", "-", "--", "---", "-x", "--nope", "\0", "a" * 5000, "../..", "/dev/zero", "/", "é", "--help=1",
            "-h", "--version", "nan", "-1", "99999999999999999999", "1e400", "%s", "$(true)", "--quiet=1", "@file",
            "none.yaml", "results/nope"]
    out = []
    for i in range(n):
        cmd = rng.choice(["run", "report", "compare", "verify", "calibrate", "serve", "env", "list", "junk", "none"])
        files = [FileSpec("bad.yaml", data=b"name: [\n"), FileSpec("one.yaml", data=ONE_CELL_SUITE.encode())]
        files += run_files("run", seeds.base_run or {})
        argv: list[str]
        marker = None
        if cmd == "run":
            argv = ["run", rng.choice(["bad.yaml", "nope.yaml", "/dev/zero", "run", "smoke-typo", ""])]
            argv += rng.sample(["--name", "--output", "--resume", "--quiet", "--dry-run"], rng.randint(0, 2))
        elif cmd == "report":
            argv = ["report", rng.choice(["run", "nope", "bad.yaml", "/"])]
            argv += rng.sample(["--out", "--prices", "--timeline", "--claims", "--print"], rng.randint(0, 3))
        elif cmd == "compare":
            argv = ["compare"] + rng.sample(["run", "nope", "bad.yaml", "run", "--metric", "--markdown",
                                             "--same-backend"], rng.randint(0, 4))
        elif cmd == "verify":
            argv = ["verify"] + rng.sample(["bad.yaml", "run", "nope", "--strict", "--markdown", "one.yaml"],
                                           rng.randint(0, 4))
        elif cmd == "calibrate":
            argv = ["calibrate", "--quick", "--output", "cal", "--device",
                    rng.choice(["cuda", "cuda:7", "npu", "", "cpu:x", "\0", "cuda:-1", "meta", "cpu:99"])]
        elif cmd == "serve":
            # each serve case carries at least one bad argument; one that starts anyway is stopped
            bad = rng.choice([["--backend", "nope"], ["--model", "nope"], ["--dtype", "fp7"], ["--port", "99999"],
                              ["--port", "-5"], ["--max-batch", "0"], ["--max-seq", "-1"], ["--option", "x"],
                              ["--option", "device=tpu"], ["--fault", "error-rate=2"], ["--fault", "nonsense"],
                              ["--max-body-bytes", "-1"], ["--max-connections", "0"], ["--batch-wait-ms", "nan"],
                              ["--max-seq", "100000000"], ["--host", "256.1.1.1"], ["--max-header-bytes", "0"]])
            argv = ["serve"] + bad
            marker = "serving "
        elif cmd == "env":
            argv = ["env"] + rng.sample(["--json", "--nope"], rng.randint(0, 2))
        elif cmd == "list":
            argv = ["list"] + rng.sample(["--all", "x"], rng.randint(0, 1))
        elif cmd == "junk":
            argv = [rng.choice(junk) for _ in range(rng.randint(1, 4))]
        else:
            argv = []
        # option values: random junk after options that take one
        argv = [a for a in argv]
        for j, a in enumerate(list(argv)):
            if a in ("--name", "--output", "--resume", "--out", "--prices", "--timeline", "--claims", "--metric",
                     "--markdown") and rng.random() < 0.8:
                argv.insert(j + 1, rng.choice(junk + ["run", "one.yaml", "bad.yaml"]))
        if cmd == "run" and "--dry-run" not in argv and ("one.yaml" in argv or "--resume" in argv):
            argv.append("--nope")  # never a real run from random argv
        subjects = [a for a in argv if a] + [p for a in argv for p in a.split("=") if len(p) > 2]
        subjects += ["argument", "usage", "bad.yaml", "run", "command"]
        out.append(Case("cli", i, " ".join(a[:20] for a in argv)[:80] or "(no arguments)", argv=argv, files=files,
                        subjects=subjects, whole_file=True, started_marker=marker))
    return out


def family_faults(rng: random.Random, seeds: Seeds, n: int) -> list[Case]:
    out = []
    for i in range(n):
        sig = rng.choice(["SIGKILL", "SIGKILL", "SIGTERM", "SIGINT", "SIGHUP"])
        delay = round(rng.uniform(1.5, 9.0), 2)
        suite = TINY_SUITE.replace("torch-b", "torch-c")
        out.append(Case("faults", i, f"{sig} after {delay} s, then --resume", mode="fault",
                        files=[FileSpec("tiny.yaml", data=suite.encode())], subjects=["run"],
                        extra={"signal": sig, "delay": delay, "timeout": 2 * REAL_RUN_TIMEOUT_S}))
    return out


def is_real_run(case: Case) -> bool:
    return (case.mode in ("meterrun", "fault") or case.resume_dir is not None
            or (case.family == "names" and case.mode == "cli"))


GENERATORS: dict[str, Callable[[random.Random, Seeds, int], list[Case]]] = {
    "suites": family_suites, "names": family_names, "claims": family_claims, "prices": family_prices,
    "results": family_results, "meterlogs": family_meterlogs, "http": family_http, "cli": family_cli,
    "faults": family_faults,
}


# --- running a case in a child ---------------------------------------------------------------

def materialize(case: Case, folder: Path) -> None:
    for f in case.files:
        p = folder / f.path
        p.parent.mkdir(parents=True, exist_ok=True)
        if f.kind == "copy":  # a folder or file of this repository (regression corpus cases)
            src = ROOT / f.data.decode()
            shutil.copytree(src, p, dirs_exist_ok=True) if src.is_dir() else shutil.copyfile(src, p)
            continue
        if f.kind == "append":
            with open(p, "ab") as fh:
                fh.write(f.data)
            continue
        if p.is_symlink() or p.is_file():  # replaces what a copy put there
            p.unlink()
        elif p.is_dir() and f.kind != "dir":
            shutil.rmtree(p)
        if f.kind == "bytes":
            p.write_bytes(f.data)
        elif f.kind == "symlink":
            os.symlink(f.data.decode(), p)
        elif f.kind == "fifo":
            os.mkfifo(p)
        elif f.kind == "dir":
            p.mkdir(exist_ok=True)


def _user_error_boundary(fn: Callable[[], int]) -> int:
    """What harness.cli.main does around a command: typed user errors become one `error:` line
    and exit 2; anything else escapes as a traceback (which is what we look for)."""
    from harness.cli import EXIT_USER_ERROR, UserError
    from harness.registry import RegistryError
    from harness.results import ResultsError
    from harness.schema import ConfigError

    try:
        return fn() or 0
    except ConfigError as e:
        print(f"error: {len(e.problems)} problems:\n{e}" if len(e.problems) > 1 else f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (UserError, RegistryError, ResultsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR


def _has_dry_run() -> bool:
    from harness.cli import _parser

    try:
        run = _parser()._subparsers._group_actions[0].choices["run"]
    except Exception:  # noqa: BLE001
        return False
    return any("--dry-run" in a.option_strings for a in run._actions)


def child_plan(case: Case) -> int:
    """`harness run SUITE --dry-run` (validate, plan, make no folder); without that option yet,
    the same path by hand: load_plan, then the run name check run_plan would make."""
    import harness.cli as cli

    name = case.extra.get("name")
    if _has_dry_run():
        argv = ["run", case.argv[0], "--dry-run"] + (["--name", name] if name is not None else [])
        return cli.main(argv)

    def plan() -> int:
        from harness.config import load_plan, resolve_suite_path
        from harness.results import safe_run_dir
        from harness.runner import new_run_id

        p = load_plan(resolve_suite_path(case.argv[0]))
        run_dir = safe_run_dir(p.suite.output, name if name is not None else new_run_id(p.suite.name))
        print(f"{len(p.cells)} cells planned; would write {run_dir}")
        return 0

    return _user_error_boundary(plan)


def child_meterlog(case: Case) -> int:
    """A log meter as a run uses it: options validated like a suite's (load_plan), the meter
    built, the log read, one window inside the log's span measured."""
    meter_cfg = case.extra["meter"]
    suite = yaml.safe_load(ONE_CELL_SUITE)
    suite["meters"] = [meter_cfg]
    Path("meter.yaml").write_text(yaml_dump(suite))

    def read() -> int:
        from harness.config import load_plan
        from harness.meters import build_meters
        from harness.meters.base import MeterError

        load_plan("meter.yaml")
        try:
            (meter,) = build_meters([meter_cfg])
            meter.start()
            samples = meter.tail.read()
        except MeterError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if not samples:
            print("no samples")
            return 0
        a, b = samples[0].t, samples[-1].t
        t0, t1 = a + (b - a) * 0.25, a + (b - a) * 0.75
        meter.begin_window("w", t0)
        (reading,) = meter.end_window("w", t1)
        meter.timeline()
        j = reading.joules
        if reading.quality == "ok" and (j is None or not math.isfinite(j)):
            print(f"fuzz-check: joules {j!r} labelled ok", file=sys.stderr)
            return 3
        if reading.quality == "unavailable" and not reading.reason:
            print("fuzz-check: unavailable without a reason", file=sys.stderr)
            return 3
        print(f"{reading.quality}: {j!r} J, {reading.reason or ''}")
        return 0

    return _user_error_boundary(read)


def child_meterrun(case: Case) -> int:
    """A real one-cell run whose csv-log / ptdaemon-log meter reads a mutated log written
    around this process's clock (so the windows fall inside it)."""
    import harness.cli as cli

    name = case.extra["log"]
    p = Path(name)
    if p.is_file() and not p.is_symlink():
        rng = random.Random(case.extra["mutation_seed"])
        t0 = time.time() - 2
        data = (csv_log if case.extra["kind"] == "csv-log" else ptd_log)(rng, t0, 400, 0.1)
        what, data = mutate_log(rng, data, case.extra["kind"])
        p.write_bytes(data)
        print(f"log mutation: {what}")
    rc = cli.main(case.argv)
    # every energy reason must name the log; a worker log must hold no traceback
    problems = []
    for log in Path("results/m/logs").glob("*") if Path("results/m/logs").exists() else []:
        if log.is_file() and "Traceback" in log.read_text(errors="replace"):
            problems.append(f"traceback in {log}")
    res = Path("results/m/results.jsonl")
    if res.exists():
        for line in res.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            for m in ((rec.get("energy") or {}).get("meters") or []):
                if not isinstance(m, dict):
                    continue
                reason = m.get("reason") or ""
                if m.get("quality") == "unavailable" and name not in reason and "log" not in reason:
                    problems.append(f"unlocated meter reason: {reason[:200]}")
                for k, v in m.items():
                    if isinstance(v, float) and not math.isfinite(v) and m.get("quality") == "ok":
                        problems.append(f"{k}={v} labelled ok")
    for pr in problems:
        print(f"fuzz-check: {pr}", file=sys.stderr)
    return 3 if problems else rc


def child_fault(case: Case) -> int:
    """A real run killed by a signal after a delay, then resumed: nothing finished may be
    lost, nothing duplicated, and the resumed run completes every planned cell."""
    import harness.cli as cli

    def in_child(argv: list[str]) -> int:
        pid = os.fork()
        if pid == 0:
            os.setpgid(0, 0)
            try:
                rc = cli.main(argv)
            except BaseException:  # noqa: BLE001
                traceback.print_exc()
                rc = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc if isinstance(rc, int) else 1)
        return pid

    pid = in_child(["run", "tiny.yaml", "--name", "f", "--quiet"])
    time.sleep(case.extra["delay"])
    sig = getattr(signal, case.extra["signal"])
    try:
        os.killpg(pid, sig) if sig == signal.SIGKILL else os.kill(pid, sig)
    except ProcessLookupError:
        pass
    deadline = time.time() + 20
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        print(f"fuzz-check: the run ignored {case.extra['signal']} for 20 s", file=sys.stderr)
        return 3
    try:
        os.killpg(pid, signal.SIGKILL)  # stray workers of a killed run
    except ProcessLookupError:
        pass
    res = Path("results/f/results.jsonl")
    before = res.read_bytes() if res.exists() else b""
    run_json = Path("results/f/run.json")
    status_after_signal = ""
    if run_json.exists():
        try:
            status_after_signal = json.loads(run_json.read_text()).get("status", "")
        except ValueError:
            status_after_signal = "unreadable"
    if not Path("results/f/suite.yaml").exists() or not Path("results/f/run.json").exists():
        print("stopped before the run folder was complete; nothing finished, nothing to resume")
        return 0
    pid = in_child(["run", "--resume", "results/f", "--quiet"])
    _, status = os.waitpid(pid, 0)
    rc = os.waitstatus_to_exitcode(status)
    after = res.read_bytes() if res.exists() else b""
    problems = []
    lost_or_twice = resume_problem(before, Path("results/f"))
    if lost_or_twice:
        problems.append(lost_or_twice)
    ok: dict[str, int] = {}
    for line in after.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("status") == "ok":
            ok[rec.get("cell_id")] = ok.get(rec.get("cell_id"), 0) + 1
    dups = {k: v for k, v in ok.items() if v > 1}
    if dups:
        problems.append(f"cells measured twice: {dups}")
    if rc == 0 and len(ok) < 4:
        problems.append(f"resume exited 0 with {len(ok)} of 4 cells ok")
    if case.extra["signal"] != "SIGKILL" and status_after_signal == "running":
        problems.append(f"run.json still 'running' after {case.extra['signal']}")
    print(f"status after signal: {status_after_signal}; resume exit {rc}; ok cells {len(ok)}")
    for pr in problems:
        print(f"fuzz-check: {pr}", file=sys.stderr)
    return 3 if problems else rc


def child_main(case: Case) -> int:
    import harness.cli as cli

    if case.mode == "plan":
        return child_plan(case)
    if case.mode == "meterlog":
        return child_meterlog(case)
    if case.mode == "meterrun":
        return child_meterrun(case)
    if case.mode == "fault":
        return child_fault(case)
    return cli.main(case.argv)


def preimport() -> None:
    """Import what the commands import, once, in the parent: every fork starts warm."""
    import harness.cli  # noqa: F401
    import harness.cells  # noqa: F401
    import harness.claims  # noqa: F401
    import harness.config  # noqa: F401
    import harness.meters  # noqa: F401
    import harness.report.compare  # noqa: F401
    import harness.report.run_report  # noqa: F401
    import harness.runner  # noqa: F401
    import harness.verdicts  # noqa: F401
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import rich.console  # noqa: F401
    try:
        from harness.registry import backend_entry_points, load_backend_class

        for name in backend_entry_points():
            try:
                load_backend_class(name)
            except Exception:  # noqa: BLE001 - a backend not installed here
                pass
    except Exception:  # noqa: BLE001
        pass


# --- the fork server ----------------------------------------------------------------------------

@dataclass
class _Running:
    case: Case
    pid: int
    folder: Path
    started: float
    before: dict = field(default_factory=dict)


class ForkServer:
    def __init__(self, work: Path, jobs: int = 2, timeout: float = TIMEOUT_S):
        self.work, self.jobs, self.timeout = work, jobs, timeout

    def _fork(self, case: Case, folder: Path) -> int:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            return pid
        # the child: its own process group (so a timeout kills its workers too), its own files
        rc = 1
        try:
            os.setpgid(0, 0)
            import resource

            # a case that blows up memory fails alone (MemoryError: a traceback), not the machine
            resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))
            os.chdir(folder)
            for fd, name in ((1, "stdout.txt"), (2, "stderr.txt")):
                f = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(f, fd)
                os.close(f)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            # the files behind fds 1 and 2, with Python's own settings for a UTF-8 console (a
            # parent such as pytest may have put capture objects in sys.stdout / sys.stderr)
            sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
            sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1)
            os.environ["COLUMNS"] = "160"
            try:
                r = child_main(case)
                rc = r if isinstance(r, int) else 0
            except SystemExit as e:  # argparse
                rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if not isinstance(e.code, int) and e.code is not None:
                    print(e.code, file=sys.stderr)
            except BaseException:  # noqa: BLE001 - what Python would print: the thing we look for
                traceback.print_exc()
                rc = 1
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(rc)

    def _prepare(self, case: Case, folder: Path) -> dict:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        materialize(case, folder)
        before = {}
        if case.resume_dir:
            p = folder / case.resume_dir / "results.jsonl"
            before["results"] = p.read_bytes() if p.is_file() and not p.is_symlink() else None
        return before

    def run_one(self, case: Case, folder: Path, keep: bool = False, timeout: Optional[float] = None) -> Result:
        before = {} if keep else self._prepare(case, folder)
        if keep:
            folder.mkdir(parents=True, exist_ok=True)
            materialize(case, folder)
        pid = self._fork(case, folder)
        r = _Running(case, pid, folder, time.time(), before)
        limit = timeout or self.timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return self._finish(r, status, False)
            if time.time() - r.started > limit:
                self._kill(pid)
                _, status = os.waitpid(pid, 0)
                return self._finish(r, status, True)
            time.sleep(0.02)

    @staticmethod
    def _kill(pid: int) -> None:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _finish(self, r: _Running, status: int, timed_out: bool, stopped: bool = False) -> Result:
        self._kill(r.pid)  # workers a command left behind
        rc = None if timed_out or stopped else os.waitstatus_to_exitcode(status)
        out = _read(r.folder / "stdout.txt")
        err = _read(r.folder / "stderr.txt")
        outcome, detail = classify(r.case, rc, out, err, timed_out, r.folder, r.before, stopped)
        return Result(r.case, outcome, rc, time.time() - r.started, detail, err, out)

    def run_many(self, cases: list[Case], on_result: Callable[[Result], None]) -> None:
        queue = list(cases)
        running: dict[int, _Running] = {}
        slot = 0
        while queue or running:
            while queue and len(running) < self.jobs:
                case = queue.pop(0)
                folder = self.work / "cases" / f"slot{slot % (self.jobs * 2)}"
                slot += 1
                while any(x.folder == folder for x in running.values()):
                    folder = self.work / "cases" / f"slot{slot % (self.jobs * 2)}"
                    slot += 1
                before = self._prepare(case, folder)
                pid = self._fork(case, folder)
                running[pid] = _Running(case, pid, folder, time.time(), before)
            for pid, r in list(running.items()):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    del running[pid]
                    on_result(self._finish(r, status, False))
                    continue
                stopped = False
                if r.case.started_marker and r.case.started_marker in _read(r.folder / "stdout.txt"):
                    stopped = True
                if stopped or time.time() - r.started > r.case.extra.get("timeout", self.timeout):
                    self._kill(pid)
                    _, status = os.waitpid(pid, 0)
                    del running[pid]
                    on_result(self._finish(r, status, not stopped, stopped))
            time.sleep(0.01)


def _read(p: Path, limit: int = 200_000) -> str:
    try:
        with open(p, "rb") as f:
            data = f.read(limit)
    except OSError:
        return ""
    return data.decode("utf-8", "replace")


# --- classification -------------------------------------------------------------------------------

_ERROR_BLOCK = re.compile(r"(?m)^(?:[\w .-]*: )?error:")
_LINE = re.compile(r":\d+\b|\bline \d+|\brecord \d+|\bbyte \d+|\[\d+\]")
_KEY = re.compile(r"(?::|\s)\s*[A-Za-z_][\w-]*(?:\.[\w-]+|\[\d+\])*\s*:")


def located(case: Case, err: str) -> bool:
    """Does the error name a file (or option) the case gave, and where in it?"""
    block = err[_ERROR_BLOCK.search(err).start():] if _ERROR_BLOCK.search(err) else err
    names = [s for s in case.subjects if s]
    if any(a.startswith("--") and len(a) > 2 and a in block for a in case.argv):
        return True  # a problem with an option's value, named by the option
    if not any(n in block for n in names):
        return False
    if case.whole_file or case.family in ("names", "cli"):
        return True
    return bool(_LINE.search(block) or _KEY.search(block))


def classify(case: Case, rc: Optional[int], out: str, err: str, timed_out: bool, folder: Path,
             before: dict, stopped: bool = False) -> tuple[str, str]:
    if timed_out:
        return "hang", f"still running after {case.extra.get('timeout', TIMEOUT_S):.0f} s"
    if "Traceback (most recent call last)" in err:
        last = [ln for ln in err.strip().splitlines() if ln.strip()][-1:]
        return "traceback", last[0][:300] if last else ""
    for path, content in case.victims.items():
        p = folder / path
        if content == "" and p.exists():
            return "other", f"{path} was written through a symlink"
        if content and (not p.exists() or p.read_text(errors="replace") != content):
            return "other", f"{path} was changed through a symlink"
    checks = [ln for ln in err.splitlines() if ln.startswith("fuzz-check:")]
    if checks:
        return "other", "; ".join(checks)[:300]
    if case.resume_dir and before.get("results") is not None and rc in (0, 1, 130):
        problem = resume_problem(before["results"], folder / case.resume_dir)
        if problem:
            return "other", problem
    if stopped:
        return "accepted", "started (stopped by the fuzzer)"
    if rc == 2:
        blocks = len(_ERROR_BLOCK.findall(err))
        if blocks != 1:
            return "unlocated", f"{blocks} error blocks: {err.strip()[:300]}"
        if not located(case, err):
            return "unlocated", err.strip()[:300]
        return "clean", ""
    if rc == 0 or (rc == 1 and case.accept_rc1):
        return "accepted", ""
    if rc is not None and rc < 0:
        return "other", f"killed by signal {-rc}"
    return "other", f"exit {rc}: {err.strip()[-300:]}"


def resume_problem(old: bytes, run_dir: Path) -> Optional[str]:
    """After a resume: every line results.jsonl held is still there, or was moved aside on
    purpose (torn fragments, records superseded by --force), and no cell has more ok records
    than before (a cell measured again although its record was readable)."""
    def read(name: str) -> bytes:
        p = run_dir / name
        return p.read_bytes() if p.is_file() and not p.is_symlink() else b""

    after = read("results.jsonl")
    kept = after + b"\n" + read("logs/torn-lines.txt") + b"\n" + read("results.superseded.jsonl")
    kept += b"\n" + b"\n".join(read(p.name) for p in run_dir.glob("results.*.jsonl"))
    for line in old.splitlines():
        body = line.strip()
        if body and body not in kept:
            return f"--resume lost a line of results.jsonl: {body[:80]!r}"
    counts_old: dict[str, int] = {}
    for c in _ok_cells(old):
        counts_old[c] = counts_old.get(c, 0) + 1
    counts_new: dict[str, int] = {}
    for c in _ok_cells(after):
        counts_new[c] = counts_new.get(c, 0) + 1
    again = sorted(c for c, k in counts_new.items() if k > max(1, counts_old.get(c, 0)))
    if again:
        return f"--resume measured finished cells again: {again[:3]}"
    return None


def _ok_cells(data: bytes) -> list[str]:
    out = []
    for line in data.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("status") == "ok" and isinstance(rec.get("cell_id"), str):
            out.append(rec["cell_id"])
    return out


# --- the http family: a real `harness serve` ------------------------------------------------------

class ServeUnderTest:
    def __init__(self, work: Path):
        self.work = work
        self.proc: Optional[subprocess.Popen] = None
        self.err_path = work / "serve.stderr"
        self.restarts = -1

    def start(self) -> None:
        ready = self.work / "serve.url"
        ready.unlink(missing_ok=True)
        self.err = open(self.err_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "harness.cli", "serve", "--backend", "torch", "--model", "tiny", "--max-seq", "512",
             "--option", "threads=1", "--ready-file", str(ready)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.err, start_new_session=True)
        self.restarts += 1
        deadline = time.time() + 120
        while not ready.exists():
            if self.proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"fuzz: harness serve did not start:\n{_read(self.err_path)[-2000:]}")
            time.sleep(0.1)
        url = ready.read_text().strip()
        self.port = int(url.rsplit(":", 1)[1].split("/")[0])

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def send(self, raw: bytes, timeout: float) -> tuple[Optional[bytes], str]:
        """(response bytes or None, what happened)."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        s.settimeout(timeout)
        chunks = []
        try:
            try:
                s.sendall(raw)
                s.shutdown(socket.SHUT_WR)  # the client has nothing more to say
            except OSError:
                pass  # the server may answer (413, 431) before reading everything
            t_end = time.time() + timeout
            while time.time() < t_end:
                try:
                    b = s.recv(65536)
                except socket.timeout:
                    return (b"".join(chunks) or None), "timeout"
                except ConnectionResetError:
                    break
                if not b:
                    break
                chunks.append(b)
            else:
                return (b"".join(chunks) or None), "timeout"
        finally:
            s.close()
        return (b"".join(chunks) or None), "closed"

    def run_case(self, case: Case) -> Result:
        t0 = time.time()
        err_size = self.err_path.stat().st_size if self.err_path.exists() else 0
        resp, how = self.send(case.http, TIMEOUT_S)
        seconds = time.time() - t0
        new_err = _read(self.err_path)[err_size:] if self.err_path.exists() else ""
        alive = self.proc.poll() is None
        try:  # is it still answering?
            probe, _ = self.send(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 10)
        except OSError:
            probe = None
        up = alive and probe is not None and probe.startswith(b"HTTP/1.1 200")
        status = None
        body = b""
        if resp:
            head, _, body = resp.partition(b"\r\n\r\n")
            while re.match(rb"HTTP/1\.[01] 1\d\d", head):  # interim (100 Continue): the answer follows
                head, _, body = body.partition(b"\r\n\r\n")
            m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
            status = int(m.group(1)) if m else None
        detail = f"HTTP {status}" if status else how
        if not up:
            outcome, detail = "other", f"server down after the request ({detail})"
            self.stop()
            self.start()
        elif "Traceback" in new_err:
            outcome, detail = "traceback", new_err.strip().splitlines()[-1][:300]
        elif how == "timeout" and status is None:
            outcome = "hang"
        elif status is None:
            outcome = "clean" if case.http_allow_close else "other"
            detail = f"closed without an answer ({how})"
        elif 400 <= status < 500:
            ok_json = True
            if b"chunked" not in resp.split(b"\r\n\r\n")[0].lower():
                try:
                    obj = json.loads(body)
                    ok_json = isinstance(obj, dict) and "error" in obj
                except ValueError:
                    ok_json = False
            outcome = "clean" if ok_json else "unlocated"
            if not ok_json:
                detail += f": not a JSON error: {body[:100]!r}"
        elif 200 <= status < 300:
            outcome = "accepted"
        elif status >= 500 and status != 503:
            outcome, detail = "traceback", f"HTTP {status}: {body[:200]!r}"
        else:
            outcome = "other"
        return Result(case, outcome, status, seconds, detail, new_err, resp[:2000].decode("utf-8", "replace")
                      if resp else "")


# --- the run ------------------------------------------------------------------------------------

def plan_counts(total: int, families: list[str]) -> dict[str, int]:
    share = {f: SHARES[f] for f in families}
    s = sum(share.values())
    counts = {f: max(1, round(total * v / s)) for f, v in share.items()}
    if "faults" in counts:
        counts["faults"] = max(1, min(counts["faults"], 12))
    return counts


def save_failure(out: Path, r: Result) -> None:
    d = out / "failures" / f"{r.case.family}-{r.case.index:04d}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "case.json").write_text(json.dumps(r.case.to_json(), indent=1))
    (d / "stderr.txt").write_text(r.stderr[-20000:])
    (d / "stdout.txt").write_text(r.stdout[-5000:])
    (d / "outcome.txt").write_text(f"{r.outcome}: {r.detail}\nexit {r.rc}, {r.seconds:.1f} s\n"
                                   f"mutation: {r.case.mutation}\nargv: {r.case.argv!r}\n")
    inputs = d / "inputs"
    shutil.rmtree(inputs, ignore_errors=True)
    inputs.mkdir()
    try:
        materialize(dataclasses.replace(r.case, files=[f for f in r.case.files if f.kind != "fifo"]), inputs)
    except OSError:
        pass
    if r.case.http:
        (inputs / "request.bin").write_bytes(r.case.http)


def summarize(results: list[Result], families: list[str], seconds: float, seed: Any) -> dict:
    table = {}
    for f in families:
        rs = [r for r in results if r.case.family == f]
        row = {"cases": len(rs)}
        for o in OUTCOMES:
            row[o] = sum(r.outcome == o for r in rs)
        row["seconds"] = round(sum(r.seconds for r in rs), 1)
        table[f] = row
    total = {"cases": len(results), **{o: sum(r.outcome == o for r in results) for o in OUTCOMES}}
    return {"seed": seed, "seconds": round(seconds, 1), "families": table, "total": total,
            "failures": [{"family": r.case.family, "index": r.case.index, "outcome": r.outcome,
                          "mutation": r.case.mutation, "detail": r.detail} for r in results
                         if r.outcome in BAD_OUTCOMES]}


def markdown(summary: dict) -> str:
    cols = ["cases", *OUTCOMES]
    lines = [f"Fuzz run: seed {summary['seed']}, {summary['total']['cases']} cases in {summary['seconds']:.0f} s",
             "", "| family | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for f, row in summary["families"].items():
        lines.append(f"| {f} | " + " | ".join(str(row[c]) for c in cols) + " |")
    lines.append("| **total** | " + " | ".join(f"**{summary['total'][c]}**" for c in cols) + " |")
    if summary["failures"]:
        lines += ["", "Failures:", ""]
        for x in summary["failures"][:200]:
            lines.append(f"- {x['family']}-{x['index']:04d} {x['outcome']}: {x['mutation'][:80]} -> "
                         f"{x['detail'][:160]}")
    return "\n".join(lines) + "\n"


def print_table(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"fuzz: {summary['total']['cases']} cases, seed {summary['seed']}, {summary['seconds']:.0f} s",
              title_justify="left")
    t.add_column("family")
    for c in ("cases", *OUTCOMES):
        t.add_column(c, justify="right")
    for f, row in summary["families"].items():
        t.add_row(f, *(_cell(c, row[c]) for c in ("cases", *OUTCOMES)))
    t.add_row("total", *(_cell(c, summary["total"][c]) for c in ("cases", *OUTCOMES)), style="bold")
    Console(width=120).print(t)


def _cell(col: str, v: int) -> str:
    return f"[red]{v}[/red]" if col in BAD_OUTCOMES and v else str(v)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cases", type=int, default=2800, help="cases in all (default 2800)")
    ap.add_argument("--seed", type=int, default=0, help="RNG seed: the same seed makes the same cases")
    ap.add_argument("--family", action="append", choices=FAMILIES, help="only these families (repeatable)")
    ap.add_argument("--out", default="results/fuzz", help="summary.json, summary.md and failures/ "
                                                          "(default results/fuzz, git-ignored)")
    ap.add_argument("--work", help="scratch folder (default: a temporary one); keeps the seed run between calls")
    ap.add_argument("--jobs", type=int, default=2, help="children at once (default 2)")
    ap.add_argument("--replay", metavar="DIR", help="re-run saved failing cases (a failures/ folder or one case)")
    ap.add_argument("--quiet", action="store_true", help="no line per failure while running")
    ap.add_argument("--base-run", metavar="DIR", help="seed results folder (default: made by a tiny run, ~12 s)")
    ap.add_argument("--no-real-runs", action="store_true",
                    help="leave out the cases that make a real run (names, meter logs, --resume, faults): quick")
    args = ap.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="harness-fuzz-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("XDG_CACHE_HOME", str(work / "cache"))
    t0 = time.time()
    preimport()
    server = ForkServer(work, jobs=max(1, args.jobs))

    if args.replay:
        rdir = Path(args.replay)
        case_files = [rdir / "case.json"] if (rdir / "case.json").exists() else sorted(rdir.glob("*/case.json"))
        cases = [Case.from_json(json.loads(p.read_text())) for p in case_files]
    else:
        families = list(args.family or FAMILIES)
        seeds = Seeds(work)
        seeds.make_base_run(server, args.base_run)
        counts = plan_counts(args.cases, families)
        cases = []
        for f in families:
            rng = random.Random(f"{args.seed}:{f}")
            cases += GENERATORS[f](rng, seeds, counts[f])
        if args.no_real_runs:
            cases = [c for c in cases if not is_real_run(c)]
    families = list(dict.fromkeys(c.family for c in cases))
    results: list[Result] = []
    (out / "failures").mkdir(exist_ok=True)

    def on_result(r: Result) -> None:
        results.append(r)
        if r.outcome in BAD_OUTCOMES:
            save_failure(out, r)
            if not args.quiet:
                print(f"  {r.outcome.upper():9} {r.case.family}-{r.case.index:04d} {r.case.mutation[:70]} -> "
                      f"{r.detail[:150]}", flush=True)
        if len(results) % 200 == 0:
            print(f"  ... {len(results)} of {len(cases)} cases, {time.time() - t0:.0f} s", flush=True)

    server.run_many([c for c in cases if c.mode != "http"], on_result)
    http_cases = [c for c in cases if c.mode == "http"]
    if http_cases:
        sut = ServeUnderTest(work)
        sut.start()
        try:
            for c in http_cases:
                on_result(sut.run_case(c))
        finally:
            sut.stop()
    order = {f: i for i, f in enumerate(families)}
    results.sort(key=lambda r: (order[r.case.family], r.case.index))
    summary = summarize(results, families, time.time() - t0, f"replay of {args.replay}" if args.replay else args.seed)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "summary.md").write_text(markdown(summary))
    print_table(summary)
    bad = sum(summary["total"][o] for o in BAD_OUTCOMES)
    print(f"summary: {out / 'summary.md'}; failing cases (replay with --replay): {out / 'failures'}" if bad
          else f"summary: {out / 'summary.md'}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
