"""Hostile and careless YAML through the real CLI: suites (`harness run`), claims
(`harness verify CLAIMS RUN`) and prices (`harness report RUN --prices FILE`).

Every case must end quickly with exit 2 and one `error:` block that names the file, and
never a traceback: alias bombs, deep nesting, recursive aliases, files too large or not
regular files (/dev/zero, a FIFO), values PyYAML cannot build (a bad date, `!!int ''`),
NUL characters, non-finite factors, values of the wrong type. Plus property-based cases
(hypothesis) that put random YAML values at every key of a valid claims and prices file.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
import re
import subprocess
import sys
import time

from hypothesis import HealthCheck, given, settings, strategies as st
import pytest
import yaml

from harness.cli import main
from harness.schema import MAX_YAML_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "tests" / "data" / "v1_runs" / "before-smoke-est"
FUZZ = settings(max_examples=60, deadline=None, report_multiple_bugs=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

CLAIM = {"name": "x", "metric": "decode_tps", "subject": {"backend": "a"}, "baseline": {"backend": "b"},
         "workload": {"model": "m", "batch": 1, "prompt_len": 8, "gen_len": 8}, "at_least": 2}
PRICES = {"electricity_per_kwh": 0.1, "utilisation": 0.5, "currency": "USD", "pue": 1.2,
          "hardware": [{"match": {"device": "cpu"}, "name": "box", "price": 1000, "lifetime_years": 4,
                        "utilisation": 0.4}]}


def claim_with(**changes) -> str:
    c = dict(CLAIM)
    c.update(changes)
    for k in [k for k, v in c.items() if v is DROP]:
        del c[k]
    return yaml.safe_dump({"claims": [c]}, sort_keys=False)


DROP = object()

# a 524-byte-class "billion laughs": 10 levels of 10 aliases = 10^10 nodes if expanded
BOMB = "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{n}: &{n} [{','.join(['*' + p] * 10)}]\n" for p, n in zip("abcdefghi", "bcdefghij"))
# few nodes, but one long string aliased many times
TEXT_BOMB = "s: &s " + "y" * 200_000 + "\nl: &l [" + ",".join(["*s"] * 60) + "]\n"

# name -> (file content, a regex the error block must match besides the file name)
CLAIMS_CASES = {
    "alias bomb": (BOMB, rf"bad\.yaml:\d+: .*aliases expand to more than {MAX_YAML_NODES:,} nodes"),
    "text bomb": (TEXT_BOMB, r"bad\.yaml:\d+: .*aliases expand to more than [\d,]+ characters"),
    "recursive alias": ("claims: &a [*a]\n", r"bad\.yaml:1: .*recursive alias"),
    "deep list": ("claims: " + "[" * 5000 + "]" * 5000 + "\n", rf"bad\.yaml:1: .*more than {MAX_YAML_DEPTH} levels"),
    "deep block mapping": ("".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "v\n",
                           rf"bad\.yaml:\d+: .*more than {MAX_YAML_DEPTH} levels"),
    "bad date": (claim_with(name="DATE").replace("'DATE'", "2020-13-45").replace("DATE", "2020-13-45"),
                 r"bad\.yaml:\d+: claims\[0\]\.name: not a valid timestamp value"),
    "int from nothing": (claim_with(workload={"model": "m", "batch": "B", "prompt_len": 8, "gen_len": 8})
                         .replace("batch: B", "batch: !!int ''"),
                         r"bad\.yaml:\d+: claims\[0\]\.workload\.batch: not a valid int value"),
    "NUL in a string": (claim_with(name="a\0b"), r"bad\.yaml:\d+: claims\[0\]\.name: a NUL character"),
    "NUL in a selector": (claim_with(subject={"backend": "a\0"}),
                          r"bad\.yaml:\d+: claims\[0\]\.subject\.backend: a NUL character"),
    "metric a list": (claim_with(metric=["decode_tps"]), r"bad\.yaml:\d+: claims\[0\]\.metric: expected one of"),
    "metric a mapping": (claim_with(metric={"a": 1}), r"bad\.yaml:\d+: claims\[0\]\.metric: expected one of"),
    "factor nan": (claim_with(at_least=DROP, factor="nan"), r"bad\.yaml:\d+: claims\[0\]\.factor: expected"),
    "factor inf": (claim_with(at_least=DROP, factor="inf"), r"bad\.yaml:\d+: claims\[0\]\.factor: expected"),
    "factor 1e400": (claim_with(at_least=DROP, factor="1e400"), r"bad\.yaml:\d+: claims\[0\]\.factor: expected"),
    "factor at least infx": (claim_with(at_least=DROP, factor="at least infx"),
                             r"bad\.yaml:\d+: claims\[0\]\.factor: expected"),
    "factor a list": (claim_with(at_least=DROP, factor=[2]), r"bad\.yaml:\d+: claims\[0\]\.factor: expected"),
    "at_least .nan": (claim_with(at_least="N").replace("at_least: N", "at_least: .nan"),
                      r"bad\.yaml:\d+: claims\[0\]\.at_least: expected a number"),
    "at_least .inf": (claim_with(at_least="N").replace("at_least: N", "at_least: .inf"),
                      r"bad\.yaml:\d+: claims\[0\]\.at_least: expected a number > 0"),
    "at_least 1e400": (claim_with(at_least="N").replace("at_least: N", "at_least: 1.0e+400"),
                       r"bad\.yaml:\d+: claims\[0\]\.at_least: expected a number > 0"),
    "at_least a huge int": (claim_with(at_least=10 ** 400),
                            r"bad\.yaml:\d+: claims\[0\]\.at_least: expected a number > 0"),  # 400 digits
    "at_least 0": (claim_with(at_least=0), r"bad\.yaml:\d+: claims\[0\]\.at_least: expected a number > 0"),
    "unhashable key": ("claims:\n  ? [a]\n  : 1\n", r"bad\.yaml:\d+: not valid YAML"),
    "python tag": ("claims: !!python/object/apply:os.system ['true']\n", r"bad\.yaml:\d+: not valid YAML"),
    "a list at the top": ("- 1\n- 2\n", r"bad\.yaml:1: \(top level\): expected a mapping"),
}
PRICES_BAD = {
    "alias bomb": (BOMB, r"aliases expand to more than"),
    "nan price": ("electricity_per_kwh: .nan\nutilisation: 0.5\n",
                  r"bad\.yaml:1: electricity_per_kwh: expected a number"),
    "inf pue": ("electricity_per_kwh: 0.1\nutilisation: 0.5\npue: .inf\n", r"bad\.yaml:3: pue: expected a value"),
    "bad date": ("electricity_per_kwh: 0.1\nutilisation: 0.5\ncurrency: 2020-02-30\n",
                 r"bad\.yaml:3: currency: not a valid timestamp value"),
    "NUL currency": ('electricity_per_kwh: 0.1\nutilisation: 0.5\ncurrency: "US\\0D"\n',
                     r"bad\.yaml:3: currency: a NUL character"),
    "match a list": ("electricity_per_kwh: 0.1\nutilisation: 0.5\nhardware:\n  - {match: {device: [1]}, price: 1, "
                     "lifetime_years: 1}\n", r"bad\.yaml:4: hardware\[0\]\.match\.device: expected str or int"),
    "deep": ("hardware: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n", r"more than \d+ levels"),
    "int from nothing": ("electricity_per_kwh: !!int ''\nutilisation: 0.5\n",
                         r"bad\.yaml:1: electricity_per_kwh: not a valid int value"),
}


def run_cli(capsys, argv) -> tuple[int, str, float]:
    t = time.monotonic()
    rc = main([str(a) for a in argv])
    took = time.monotonic() - t
    err = capsys.readouterr().err
    return rc, err, took


def assert_one_error(rc: int, err: str, path: Path, took: float, limit_s: float = 5.0) -> None:
    assert rc == 2, err
    assert "Traceback" not in err, err
    assert err.startswith("error: ") and err.count("error:") == 1, err
    assert str(path) in err, err
    assert took < limit_s, f"took {took:.1f} s"


@pytest.mark.parametrize("name", list(CLAIMS_CASES))
def test_claims_corpus(tmp_path, capsys, name):
    text, pattern = CLAIMS_CASES[name]
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    rc, err, took = run_cli(capsys, ["verify", path, RUN, "--markdown", tmp_path / "verdicts.md"])
    assert_one_error(rc, err, path, took)
    assert re.search(pattern, err), err


@pytest.mark.parametrize("name", list(PRICES_BAD))
def test_prices_corpus(tmp_path, capsys, name):
    text, pattern = PRICES_BAD[name]
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    rc, err, took = run_cli(capsys, ["report", RUN, "--prices", path, "--out", tmp_path / "report"])
    assert_one_error(rc, err, path, took)
    assert re.search(pattern, err), err


def test_the_valid_claims_and_prices_still_load(tmp_path, capsys):
    """The corpus is only meaningful if the untouched files pass."""
    claims, prices = tmp_path / "claims.yaml", tmp_path / "prices.yaml"
    claims.write_text(claim_with())
    prices.write_text(yaml.safe_dump(PRICES))
    rc, err, _ = run_cli(capsys, ["verify", claims, RUN, "--markdown", tmp_path / "verdicts.md"])
    assert rc in (0, 1) and "error:" not in err, err
    assert (tmp_path / "verdicts.md").exists()  # judged, not refused; and nothing written into tests/data
    rc, err, _ = run_cli(capsys, ["report", RUN, "--prices", prices, "--out", tmp_path / "report"])
    assert rc == 0, err
    # anchors and aliases under the limits are ordinary YAML and still load
    claims.write_text("claims:\n"
                      "  - {metric: decode_tps, subject: &s {backend: a}, baseline: &b {backend: b},\n"
                      "     workload: &w {model: m, batch: 1, prompt_len: 8, gen_len: 8}, at_least: 2}\n"
                      "  - {metric: ttft_s, subject: *s, baseline: *b, workload: *w, factor: at least 1.5x}\n")
    from harness.claims import load_claims
    loaded = load_claims(claims)
    assert [c.at_least for c in loaded] == [2, 1.5] and loaded[1].subject.backend == "a"


def test_alias_bomb_is_refused_while_composing_not_after(tmp_path):
    """10^10 nodes if expanded: refused in well under a second, with the line of the alias."""
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    assert len(BOMB) < 600
    from harness.claims import load_claims
    from harness.schema import ConfigError
    t = time.monotonic()
    with pytest.raises(ConfigError) as e:
        load_claims(path)
    assert time.monotonic() - t < 1.0
    assert re.fullmatch(rf"{re.escape(str(path))}:[2-9]: not valid YAML: aliases expand to more than "
                        rf"{MAX_YAML_NODES:,} nodes.*", str(e.value)), str(e.value)


def test_size_limit_is_exact(tmp_path):
    from harness.schema import ConfigError, read_yaml
    path = tmp_path / "big.yaml"
    filler = "# " + "c" * 70 + "\n"
    body = "a: 1\n"
    body += filler * ((MAX_YAML_BYTES - len(body)) // len(filler))
    body += "#" * (MAX_YAML_BYTES - len(body) - 1) + "\n"
    path.write_text(body)
    assert path.stat().st_size == MAX_YAML_BYTES
    assert read_yaml(path, "test").data == {"a": 1}
    path.write_text(body + "\n")
    with pytest.raises(ConfigError, match=rf"big\.yaml: test file too large \({MAX_YAML_BYTES + 1:,} bytes"):
        read_yaml(path, "test")


def _harness(args, tmp_path, timeout=60):
    t = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "harness", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)
    return proc, time.monotonic() - t


@pytest.mark.parametrize("target", ["/dev/zero", "fifo", "directory", "too large"])
def test_harness_run_on_a_stream_or_huge_file_ends_at_once(tmp_path, target):
    if target == "/dev/zero":
        path = Path("/dev/zero")
        if not path.exists():
            pytest.skip("no /dev/zero here")
    elif target == "fifo":
        path = tmp_path / "suite.yaml"
        os.mkfifo(path)  # nobody writes: a plain open() would wait forever
    elif target == "directory":
        path = tmp_path / "suite.yaml"
        path.mkdir()
    else:
        path = tmp_path / "suite.yaml"
        with open(path, "wb") as f:
            f.truncate(50 * MAX_YAML_BYTES)  # sparse: costs no disk
    proc, took = _harness(["run", path, "--output", tmp_path / "out"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and str(path) in proc.stderr, proc.stderr
    assert re.search(r"not a regular file|too large", proc.stderr), proc.stderr
    assert took < 20
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["alias bomb", "recursive alias", "deep list", "bad date", "int from nothing",
                                  "NUL in a string"])
def test_harness_run_on_a_hostile_suite(tmp_path, name):
    """The same loader reads suites: through a real process, no half-made run folder."""
    text = CLAIMS_CASES[name][0]
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    proc, took = _harness(["run", path, "--output", tmp_path / "out"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and f"{path}:" in proc.stderr, proc.stderr
    assert took < 20
    assert not (tmp_path / "out").exists()


# --- property-based: random values at every key of a valid claims / prices file ---------------

ODD_TEXT = st.sampled_from(["nan", "inf", "-inf", "1e400", "at least nanx", "at least 1e999x", "0x10", "", " ",
                            "\0", "a\0b", "2020-13-45", "~", "best", "-1", "1_000"])
LEAF = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=10 ** 300, max_value=10 ** 400),
                 st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20), ODD_TEXT)
VALUE = st.recursive(LEAF, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                     max_leaves=8)
# a raw YAML scalar spelling, so that tags and PyYAML's own constructors get exercised too
RAW = st.sampled_from(["!!int ''", "!!float ''", "!!int x", "!!timestamp 2020-13-45", "2020-02-30",
                       "2020-12-05", "!!binary '!!'", "!!set {a}", "!!omap [a]", "!!bool maybe", ".nan", ".inf",
                       "-.inf", "1.0e+400", "0b102", "0o9", "1:2:3", "*nope", "&x [*x]", "!!str", "{a: *b}",
                       "[" * 100 + "]" * 100, "!!python/name:os.system", "!!merge 1"])


def key_paths(doc, prefix=()):
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += key_paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += key_paths(v, prefix + (i,))
    return out


def put(doc, path, value):
    doc = copy.deepcopy(doc)
    cur = doc
    for p in path[:-1]:
        cur = cur[p]
    cur[path[-1]] = value
    return doc


CLAIMS_DOC = {"claims": [CLAIM]}
CLAIM_PATHS = key_paths(CLAIMS_DOC)
PRICES_PATHS = key_paths(PRICES)
MARK = "HOSTILE_RAW_VALUE"


def check_loader(load, path: Path):
    """Either loads, or ConfigError whose every problem is `path:line: ...`; nothing else."""
    from harness.schema import ConfigError
    t = time.monotonic()
    try:
        load(path)
    except ConfigError as e:
        assert e.problems
        for p in e.problems:
            assert re.match(rf"{re.escape(str(path))}(:\d+)?: \S", p), p
            assert "Traceback" not in p
    assert time.monotonic() - t < 5


@FUZZ
@given(path=st.sampled_from(CLAIM_PATHS), value=VALUE)
def test_any_value_at_any_claims_key(tmp_path, path, value):
    from harness.claims import load_claims
    f = tmp_path / "claims.yaml"
    f.write_text(yaml.safe_dump(put(CLAIMS_DOC, path, value), allow_unicode=True))
    check_loader(load_claims, f)


@FUZZ
@given(path=st.sampled_from(CLAIM_PATHS), raw=RAW)
def test_any_raw_yaml_at_any_claims_key(tmp_path, path, raw):
    from harness.claims import load_claims
    f = tmp_path / "claims.yaml"
    text = yaml.safe_dump(put(CLAIMS_DOC, path, MARK), default_flow_style=True, width=10 ** 6)
    f.write_text(text.replace(MARK, raw))
    check_loader(load_claims, f)


@FUZZ
@given(path=st.sampled_from(PRICES_PATHS), value=VALUE)
def test_any_value_at_any_prices_key(tmp_path, path, value):
    from harness.report.prices import load_prices
    f = tmp_path / "prices.yaml"
    f.write_text(yaml.safe_dump(put(PRICES, path, value), allow_unicode=True))
    check_loader(load_prices, f)


@FUZZ
@given(path=st.sampled_from(PRICES_PATHS), raw=RAW)
def test_any_raw_yaml_at_any_prices_key(tmp_path, path, raw):
    from harness.report.prices import load_prices
    f = tmp_path / "prices.yaml"
    text = yaml.safe_dump(put(PRICES, path, MARK), default_flow_style=True, width=10 ** 6)
    f.write_text(text.replace(MARK, raw))
    check_loader(load_prices, f)


@FUZZ
@given(factor=st.one_of(ODD_TEXT, st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12)))
def test_a_claim_factor_is_finite_and_positive_or_refused(tmp_path, factor):
    from harness.claims import load_claims
    from harness.schema import ConfigError
    import math
    f = tmp_path / "claims.yaml"
    f.write_text(claim_with(at_least=DROP, factor=factor), encoding="utf-8")
    try:
        claims = load_claims(f)
    except ConfigError as e:
        assert all(p.startswith(f"{f}:") for p in e.problems), e.problems
    else:
        assert math.isfinite(claims[0].at_least) and claims[0].at_least > 0, claims[0].at_least
