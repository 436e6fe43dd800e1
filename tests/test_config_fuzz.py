"""The suite loader, fed malformed input: a clear ConfigError, never a traceback.

Property-based (hypothesis): random text, random bytes, a valid suite with random
characters corrupted, and a valid suite with random values (of any YAML type) put at
every known key. Whatever comes in, harness.config.load_plan either returns a plan or
raises ConfigError, and each problem starts with the file path and names a key (or, for
a file that is not a YAML mapping at all, says so). Plus hand-picked YAML oddities
(recursive aliases, deep nesting, tags, non-UTF-8 bytes...) checked every time, and
`harness run` on a few of them: exit status 2, no traceback.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
import re
import subprocess
import sys

from hypothesis import HealthCheck, assume, given, settings, strategies as st
import pytest
import yaml

from harness.config import AccuracyConfig, BackendConfig, ConfigError, EnergyConfig, SuiteConfig, WorkloadConfig, \
    load_plan
from harness.registry import load_backend_class, load_scenario_class

ROOT = Path(__file__).resolve().parent.parent
# report_multiple_bugs=False: a failure is shrunk once, not once per kind of crash (minutes on 2 cores)
FUZZ = settings(max_examples=100, deadline=None, report_multiple_bugs=False,
                suppress_health_check=[HealthCheck.too_slow])

VALID = {
    "name": "fuzz",
    "warmup": 0,
    "repetitions": 1,
    "backends": [{"type": "torch", "name": "cpu", "options": {"device": "cpu", "threads": 1}}],
    "workloads": [{"model": "tiny", "dtypes": ["fp32"], "batch_sizes": [1, 2], "prompt_lens": [8], "gen_lens": [4]}],
    "energy": {"enabled": False, "idle_s": 0.1},
    "accuracy": {"seq_len": 24, "prefill_len": 16},
    "meters": [{"type": "estimate", "watts": 100}],
    # the request scenario with the most keys, so that every one of them is fuzzed
    "scenario": {"type": "server", "rates": [1]},
}
# Whole-file problems name no key: the file is not YAML, or not a mapping of suite keys.
FILE_LEVEL = re.compile(r"^(not valid YAML|cannot read suite file|not UTF-8|expected a mapping of suite keys|"
                        r"nested too deeply)")


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "suite.yaml"


def load(path: Path, content: str | bytes):
    """load_plan on content: a plan, or the ConfigError's problems. Anything else fails the test."""
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    try:
        return load_plan(path)
    except ConfigError as e:
        assert e.problems, "a ConfigError with no problem in it"
        for p in e.problems:
            check_problem(path, p)
        return e.problems


def check_problem(path: Path, problem: str, key_required: bool = False) -> str:
    """Each problem: '<file>[:<line>]: <key path>: <what>' (or a whole-file problem). Returns the key path."""
    prefix = str(path)
    assert problem.startswith(prefix + ":"), f"problem does not start with the file path: {problem!r}"
    rest = problem[len(prefix) + 1:]
    m = re.match(r"(\d+): ", rest)
    if m:
        assert int(m.group(1)) >= 1, problem
        rest = rest[m.end():]
    else:
        rest = rest.lstrip()
    if not key_required and FILE_LEVEL.match(rest):
        return ""
    key, sep, what = rest.partition(": ")
    assert sep and key.strip() and what.strip(), f"problem names no key: {problem!r}"
    return key


def dump(data) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


# --- what to put where ----------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(-5, 5), st.integers(), st.integers(min_value=2**63, max_value=2**2000),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(-10, 10),
    st.text(max_size=12), st.sampled_from(["fp32", "bf16", "tiny", "torch", "cpu", "cuda", "offline", "", "1e400"]),
)
keys = st.one_of(st.text(max_size=10), st.integers(), st.booleans(), st.none(), st.floats(allow_nan=False))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(keys, inner, max_size=4)), max_leaves=12)


def _key_paths() -> list[tuple]:
    """Every key a suite knows, as a path into VALID (from the schema, so it stays in sync)."""
    out = [(f.name,) for f in dataclasses.fields(SuiteConfig)]
    out += [("energy", f.name) for f in dataclasses.fields(EnergyConfig)]
    out += [("accuracy", f.name) for f in dataclasses.fields(AccuracyConfig)]
    out += [("backends", 0, f.name) for f in dataclasses.fields(BackendConfig)]
    out += [("backends", 0, "options", f.name) for f in dataclasses.fields(load_backend_class("torch").Options)]
    out += [("workloads", 0, f.name) for f in dataclasses.fields(WorkloadConfig)]
    out += [("workloads", 0, k, 0) for k in ("dtypes", "batch_sizes", "prompt_lens", "gen_lens")]
    out += [("backends", 0), ("workloads", 0), ("meters", 0), ("meters", 0, "type"), ("meters", 0, "watts")]
    out += [("scenario", f.name) for f in dataclasses.fields(load_scenario_class(VALID["scenario"]["type"]).Config)]
    return out


KEY_PATHS = _key_paths()


def put(doc: dict, path: tuple, value) -> dict:
    doc = copy.deepcopy(doc)
    node = doc
    for k in path[:-1]:
        if isinstance(k, int):
            node = node[k]
        else:
            node = node.setdefault(k, {})
    node[path[-1]] = value
    return doc


def show(path: tuple) -> str:
    out = ""
    for k in path:
        out += f"[{k}]" if isinstance(k, int) else (f".{k}" if out else str(k))
    return out


def typo(key: str, how: int, at: int) -> str:
    i = at % max(len(key), 1)
    if how == 0:
        return key[:i] + key[i + 1:]  # a letter dropped
    if how == 1:
        return key[:i] + key[i] + key[i:]  # a letter doubled
    j = min(i + 1, len(key) - 1)
    return key[:i] + key[j] + key[i] + key[j + 1:] if j > i else key + "s"  # two letters swapped


# --- properties ---------------------------------------------------------------------

def test_the_valid_suite_loads(suite_file):
    plan = load(suite_file, dump(VALID))
    assert not isinstance(plan, list), plan
    assert len(plan.cells) == 2


@FUZZ
@given(text=st.text(max_size=300))
def test_any_text(suite_file, text):
    load(suite_file, text)


@FUZZ
@given(data=st.binary(max_size=200))
def test_any_bytes(suite_file, data):
    load(suite_file, data)


YAMLISH = st.lists(st.sampled_from(list(":-[]{}&*!|>'\"%@`#,?.\n \t\\ab10") + ["x:", "- ", "!!", "&a ", "*a", "<<: ",
                                                                                   "!!int ", "2020-13-45", "~"]),
                   max_size=60).map("".join)


@FUZZ
@given(text=YAMLISH)
def test_yaml_punctuation_soup(suite_file, text):
    load(suite_file, "name: x\n" + text)


@FUZZ
@given(cuts=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 6), st.sampled_from(
    ["", ":", "-", " ", "\n", "\t", "[", "]", "{", "}", "'", '"', "&x", "*x", "!!str", "#", "? ", "|", ">", "%", "@"])),
    min_size=1, max_size=4))
def test_a_valid_suite_with_characters_corrupted(suite_file, cuts):
    text = dump(VALID)
    for at, drop, insert in cuts:
        at %= len(text) + 1
        text = text[:at] + insert + text[at + drop:]
    load(suite_file, text)


@FUZZ
@given(path=st.sampled_from(KEY_PATHS), value=values)
def test_any_value_at_any_known_key(suite_file, path, value):
    out = load(suite_file, dump(put(VALID, path, value)))
    if isinstance(out, list):  # a problem: it names the key that was changed, or one beside it
        named = [check_problem(suite_file, p, key_required=True) for p in out]
        root = show(path[:1]) if len(path) > 1 else ""  # top-level keys: any key (e.g. backends -> workloads' dtypes)
        assert any(k.startswith(root) for k in named), (show(path), out)


@FUZZ
@given(changes=st.lists(st.tuples(st.sampled_from(KEY_PATHS), values), min_size=2, max_size=5))
def test_many_bad_values_at_once(suite_file, changes):
    doc = VALID
    for path, value in changes:
        try:
            doc = put(doc, path, value)
        except (TypeError, KeyError, IndexError, AttributeError):
            continue  # an earlier change replaced the container this path goes through
    out = load(suite_file, dump(doc))
    if isinstance(out, list):
        for p in out:
            check_problem(suite_file, p, key_required=True)


@FUZZ
@given(path=st.sampled_from([p for p in KEY_PATHS if isinstance(p[-1], str) and p[0] != "meters"]),
       how=st.integers(0, 2), at=st.integers(0, 30))
def test_a_misspelt_key_is_named_with_a_suggestion(suite_file, path, how, at):
    key = path[-1]
    bad = typo(key, how, at)
    known = {p[-1] for p in KEY_PATHS if p[:-1] == path[:-1]}
    assume(bad and bad not in known)
    doc = copy.deepcopy(VALID)
    node = doc
    for k in path[:-1]:
        node = node[k] if isinstance(k, int) else node.setdefault(k, {})
    node[bad] = node.pop(key, 1)
    out = load(suite_file, dump(doc))
    assert isinstance(out, list), f"{bad!r} accepted in place of {key!r}"
    where = show(path[:-1] + (bad,))
    msgs = [p for p in out if f": {where}: unknown key" in p]
    assert msgs, out
    if len(key) > 4:
        assert f"did you mean {key!r}?" in msgs[0], msgs[0]


# --- hand-picked oddities, every time ----------------------------------------------------

BASE = dump(VALID)
ODDITIES = {
    "recursive alias": "name: &a [*a]\nbackends: []\nworkloads: []\n",
    "recursive mapping": "name: x\nenergy: &e {idle_s: *e}\n",
    "deep list": "name: " + "[" * 3000 + "]" * 3000 + "\n",
    "deep mapping": "name: x\ndescription: " + "{a: " * 2000 + "1" + "}" * 2000 + "\n",
    "python tag": BASE + "description: !!python/object/apply:os.system ['echo pwned']\n",
    "python name": BASE + "description: !!python/name:os.system\n",
    "unknown tag": BASE + "description: !vendor-thing 3\n",
    "not UTF-8": b"name: \xff\xfe\x00x\n",
    "latin-1": "name: caf\u00e9\n".encode("latin-1"),
    "NUL": "name: a\x00b\n",
    "BOM": "\ufeff" + BASE,
    "tab indent": "name: x\n\tbackends: 1\n",
    "two documents": BASE + "---\nname: y\n",
    "only a scalar": "hello\n",
    "a list": "- name: x\n",
    "empty": "",
    "only a comment": "# nothing\n",
    "complex key": BASE + "? [a, b]\n: c\n",
    "set": BASE.replace("meters:\n- type: estimate\n  watts: 100\n", "meters: !!set {a, b}\n"),
    "binary": BASE + "description: !!binary aGVsbG8=\n",
    "timestamp seed": BASE + "seed: 2020-01-01\n",
    "huge int for a float": BASE + "timeout_s: 1" + "0" * 400 + "\n",
    "huge int": BASE + "repetitions: 1" + "0" * 400 + "\n",
    "int of 5000 digits": BASE + "repetitions: 1" + "0" * 5000 + "\n",
    "impossible date": BASE + "seed: 2020-13-45\n",
    "int tag on text": BASE + "seed: !!int abc\n",
    "float tag on text": BASE + "timeout_s: !!float abc\n",
    "empty int tag": BASE + "seed: !!int ''\n",
    "nan": BASE + "timeout_s: .nan\n",
    "merge key": "name: m\nbackends:\n  - &b {type: torch, name: a, options: {device: cpu}}\n  - {<<: *b, name: b}\n"
                 "workloads: [{model: tiny, prompt_lens: [8], gen_lens: [4]}]\nenergy: {enabled: false}\n",
    "int key": BASE + "1: 2\n",
    "null key": BASE + "~: 2\n",
    "backend type a list": dump(put(VALID, ("backends", 0, "type"), ["torch"])),
    "backend type a mapping": dump(put(VALID, ("backends", 0, "type"), {"a": 1})),
    "backend name an int": dump(put(VALID, ("backends", 0, "name"), 5)),
    "backend name a list": dump(put(VALID, ("backends", 0, "name"), ["a"])),
    "model a list": dump(put(VALID, ("workloads", 0, "model"), ["tiny"])),
    "model an int": dump(put(VALID, ("workloads", 0, "model"), 5)),
    "dtype a list": dump(put(VALID, ("workloads", 0, "dtypes", 0), ["fp32"])),
    "prompt_lens strings": dump(put(VALID, ("workloads", 0, "prompt_lens"), ["a", 8])),
    "gen_lens null": dump(put(VALID, ("workloads", 0, "gen_lens"), None)),
    "checkpoint an int": dump(put(VALID, ("workloads", 0, "checkpoint"), 5)),
    "checkpoint a list": dump(put(VALID, ("workloads", 0, "checkpoint"), ["a"])),
    "prefill_len a string": dump(put(VALID, ("accuracy", "prefill_len"), "a")),
    "seq_len null": dump(put(VALID, ("accuracy", "seq_len"), None)),
    "meter type a list": dump(put(VALID, ("meters", 0, "type"), ["estimate"])),
    "meter a string": dump(put(VALID, ("meters", 0), "estimate")),
}
# documents that still make a valid suite
ACCEPTED = {"BOM", "merge key"}


@pytest.mark.parametrize("name", list(ODDITIES))
def test_oddity(suite_file, name):
    out = load(suite_file, ODDITIES[name])
    if name in ACCEPTED:
        assert not isinstance(out, list), out
    else:
        assert isinstance(out, list), f"{name}: accepted"


def test_all_problems_are_reported_at_once(suite_file):
    doc = put(put(put(VALID, ("repetitions",), "three"), ("energy", "idle_s"), -1), ("workloads", 0, "modle"), "x")
    out = load(suite_file, dump(doc))
    assert isinstance(out, list) and len(out) >= 3, out
    assert any(": repetitions: expected an integer" in p for p in out)
    assert any(": energy.idle_s: expected a value from 0" in p for p in out)
    assert any(": workloads[0].modle: unknown key (did you mean 'model'?)" in p for p in out)


@pytest.mark.parametrize("name", ["backend type a list", "not UTF-8", "recursive alias", "python tag",
                                  "huge int for a float", "tab indent"])
def test_harness_run_on_a_malformed_suite_exits_2_without_a_traceback(tmp_path, name):
    content = ODDITIES[name]
    path = tmp_path / "bad.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(path), "--output", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and str(path) in proc.stderr
    assert not (tmp_path / "out").exists()
