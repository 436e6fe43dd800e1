"""The README stays true (issue 20): every key the suite schema accepts is documented
in it, and every command of its command table parses with the real argument parser.

The keys are read from the schema itself (the dataclasses harness.schema validates
against: the suite, each registered backend's Options, each meter's Options, each
scenario's Config), so a key added to the code without a README line fails here."""
from __future__ import annotations

import dataclasses
from pathlib import Path
import re
import shlex
import typing

import pytest

from harness import registry
from harness.cli import _parser
from harness.config import SuiteConfig
from harness.meters import METER_TYPES

README = Path(__file__).resolve().parent.parent / "README.md"


def _keys(cls, prefix: str) -> list[tuple[str, str]]:
    """(where, key) for every field of a schema dataclass and the dataclasses nested in it."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        out.append((prefix + f.name, f.name))
        stack = [hints[f.name]]
        while stack:
            t = stack.pop()
            if dataclasses.is_dataclass(t):
                out += _keys(t, f"{prefix}{f.name}.")
            else:
                stack.extend(typing.get_args(t))
    return out


def _schema_keys() -> list[tuple[str, str]]:
    keys = _keys(SuiteConfig, "suite: ")
    for kind, cls in METER_TYPES.items():
        keys += _keys(cls.Options, f"meter {kind}: ")
    for name in registry.backend_entry_points():
        try:
            cls = registry.load_backend_class(name)
        except Exception as e:  # a third-party plugin installed here is not ours to document
            if name in ("torch", "onnxruntime", "llama.cpp", "transformers", "openai-http"):
                raise AssertionError(f"shipped backend {name} does not load: {e}")
            continue
        if registry.SOURCE_ROOT.as_posix() not in Path(cls.__module__.replace(".", "/")).as_posix() \
                and not cls.__module__.startswith("backends."):
            continue  # a test plugin (tests/plugins) documents itself
        keys += _keys(cls.Options, f"backend {name}: ")
    for name in registry.scenario_entry_points():
        cls = registry.load_scenario_class(name)
        if cls.__module__.startswith("harness."):
            keys += _keys(cls.Config, f"scenario {name}: ")
    return keys


def test_schema_walk_finds_the_keys_it_must():
    """The walk is not vacuous: it reaches nested dataclasses and every kind of schema."""
    wheres = {w for w, _ in _schema_keys()}
    for must in ("suite: energy.idle_s", "suite: backends.placement.resources", "meter csv-log: sample_covers",
                 "backend llama.cpp: n_ubatch", "backend openai-http: probe", "scenario server: rates",
                 "scenario server: lengths.min_output_len"):
        assert must in wheres, must


def test_every_suite_key_is_in_the_readme():
    text = README.read_text()
    # a key counts as documented where it is written as code: in a fenced block (the suite
    # and scenario examples) or an inline code span (the option tables)
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M))
    code = "\n".join(fenced + inline)
    missing = sorted({where for where, key in _schema_keys() if not re.search(r"\b" + re.escape(key) + r"\b", code)})
    assert not missing, "keys the schema accepts but README.md never names:\n" + "\n".join(missing)


def _table_commands() -> list[str]:
    text = README.read_text()
    section = text.split("## Commands", 1)[1].split("\n## ", 1)[0]
    return [m.group(1) for m in re.finditer(r"^\| `(harness [^`]*)` \|", section, re.M)]


def _argv(synopsis: str) -> list[str]:
    """A synopsis as one concrete command line: every optional part included, the first of
    alternatives, placeholders (upper-case words) given a value."""
    s = synopsis.replace("\\|", "|").replace("[...]", "").replace("...", "")
    s = re.sub(r"\b([\w-]+)\|[\w|-]+", r"\1", s)  # cpu|cuda -> cpu
    s = s.replace("[", " ").replace("]", " ")
    argv = shlex.split(s)[1:]
    out = []
    for a in argv:
        if re.fullmatch(r"[A-Z][A-Z_]*(\.yaml|\.pem)?", a):
            a = "x.yaml" if a.endswith(".yaml") else "8" if a == "N" else "x"  # N: a count
        out.append(a)
    return out


def test_command_table_is_complete():
    table = {c.split()[1] for c in _table_commands()}
    parser = _parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(sub.choices) <= table, f"commands missing from the README table: {set(sub.choices) - table}"


@pytest.mark.parametrize("synopsis", _table_commands())
def test_every_command_in_the_table_parses(synopsis):
    argv = _argv(synopsis)
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse's exit on an unknown option or a missing argument
        pytest.fail(f"README command `{synopsis}` does not parse as {argv}: exit {e.code}")
    assert args.func is not None
