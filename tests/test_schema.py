"""The one validation mechanism (harness.schema): every problem of a file at once, each as
`file:line: key.path: what was expected`."""
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from harness.schema import Checker, ConfigError, build, check_file


@dataclass
class Inner:
    kind: Literal["a", "b"] = "a"
    weight: float = field(default=1.0, metadata={"range": (0.0, 10.0)})


@dataclass
class Outer:
    name: str
    count: int = 1
    tags: list[str] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)
    limit: Optional[float] = None

    def problems(self):
        if self.limit is not None and self.limit < self.count:
            return [("limit", f"expected at least count ({self.count}), got {self.limit:g}")]
        return []


def test_every_problem_is_reported_with_its_line(tmp_path):
    p = tmp_path / "f.yaml"
    p.write_text("name: x\n"
                 "cuont: 3\n"          # line 2: typo
                 "tags: [a, 7]\n"      # line 3: not a string
                 "inner:\n"
                 "  kind: c\n"         # line 5: not in the Literal
                 "  weight: 11\n")     # line 6: out of range
    with pytest.raises(ConfigError) as e:
        check_file(Outer, p, "test")
    probs = e.value.problems
    assert f"{p}:2: cuont: unknown key (did you mean 'count'?)" in probs
    assert f"{p}:3: tags[1]: expected a string, got 7" in probs
    assert f"{p}:5: inner.kind: expected one of a, b, got 'c'" in probs
    assert any(x.startswith(f"{p}:6: inner.weight: expected a value from 0 to 10") for x in probs)
    assert len(probs) == 4


def test_cross_key_hook_and_duplicates_and_missing_keys(tmp_path):
    p = tmp_path / "f.yaml"
    p.write_text("count: 5\nlimit: 2\ncount: 6\n")
    with pytest.raises(ConfigError) as e:
        check_file(Outer, p, "test")
    probs = e.value.problems
    assert f"{p}:3: count: key given twice (the first value would be silently ignored)" in probs
    assert any(x.endswith("name: required key missing") for x in probs)
    assert any(x.startswith(f"{p}:2: limit: expected at least count (6)") for x in probs)


def test_unreadable_files_name_file_and_line(tmp_path):
    p = tmp_path / "f.yaml"
    p.write_bytes(b"name: x\nbad: \xff\n")
    with pytest.raises(ConfigError, match=r"f\.yaml:2: not UTF-8"):
        check_file(Outer, p, "test")
    p.write_text("name: [x\n")
    with pytest.raises(ConfigError, match=r"f\.yaml:\d+: not valid YAML"):
        check_file(Outer, p, "test")
    p.write_text("name: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        check_file(Outer, p, "test")
    with pytest.raises(ConfigError, match="cannot read test file"):
        check_file(Outer, tmp_path / "missing.yaml", "test")


def test_build_outside_a_file_raises_the_callers_error_type():
    class MyError(Exception):
        pass

    assert build(Outer, {"name": "x", "inner": {"kind": "b"}}, "opts").inner.kind == "b"
    with pytest.raises(MyError, match="opts: count: expected an integer, got 'x'"):
        build(Outer, {"name": "x", "count": "x"}, "opts", error=MyError)
    with pytest.raises(ConfigError):
        build(Outer, {"name": "x", "bogus": 1}, "opts")


def test_bad_values_fall_back_to_defaults_so_checking_goes_on():
    chk = Checker("f.yaml", {})
    out = chk.dataclass(Outer, {"name": "x", "count": True, "limit": float("nan")}, "")
    assert out is not None and out.count == 1 and out.limit is None  # both reported, defaults stand in
    assert len(chk.problems) == 2


def test_yaml_node_limit_is_exact_and_counts_aliases_expanded(tmp_path):
    """MAX_YAML_NODES counts every scalar, list and mapping, an alias as the whole subtree it
    stands for: N nodes load, N + 1 are refused with the line where the count ran over."""
    from harness.schema import MAX_YAML_NODES, read_yaml

    p = tmp_path / "f.yaml"
    p.write_text("[" + ",".join(["1"] * (MAX_YAML_NODES - 1)) + "]\n")  # the list + its items
    assert len(read_yaml(p, "test").data) == MAX_YAML_NODES - 1
    p.write_text("[" + ",".join(["1"] * MAX_YAML_NODES) + "]\n")
    with pytest.raises(ConfigError, match=rf"f\.yaml:1: not valid YAML: the file holds more than {MAX_YAML_NODES:,}"):
        read_yaml(p, "test")
    # `a` is 1 + 100 nodes; the mapping, its 2 keys and `a` itself: 104, and each alias 101 more
    n_alias = (MAX_YAML_NODES - 104) // 101
    def aliased(n):
        return "a: &a [" + ",".join(["1"] * 100) + "]\nb: [" + ",".join(["*a"] * n) + "]\n"
    p.write_text(aliased(n_alias))
    assert len(read_yaml(p, "test").data["b"]) == n_alias
    p.write_text(aliased(n_alias + 1))
    with pytest.raises(ConfigError,
                       match=rf"f\.yaml:2: not valid YAML: aliases expand to more than {MAX_YAML_NODES:,}"):
        read_yaml(p, "test")


def test_yaml_values_pyyaml_cannot_build_are_located(tmp_path):
    p = tmp_path / "f.yaml"
    p.write_text("name: x\ninner:\n  kind: 2020-13-45\n")
    with pytest.raises(ConfigError, match=r"f\.yaml:3: inner\.kind: not a valid timestamp value: '2020-13-45'"):
        check_file(Outer, p, "test")
    p.write_text("name: x\ncount: !!int ''\n")
    with pytest.raises(ConfigError, match=r"f\.yaml:2: count: not a valid int value"):
        check_file(Outer, p, "test")
    p.write_text('name: "a\\0b"\n')
    with pytest.raises(ConfigError, match=r"f\.yaml:1: name: a NUL character"):
        check_file(Outer, p, "test")
    p.write_text("name: &n [x, *n]\n")
    with pytest.raises(ConfigError, match=r"f\.yaml:1: not valid YAML: alias \*n refers to a node that contains it"):
        check_file(Outer, p, "test")
    with pytest.raises(ConfigError, match="not a regular file"):
        check_file(Outer, tmp_path, "test")


def test_nul_in_a_string_outside_a_file_is_refused():
    with pytest.raises(ConfigError, match=r"opts: name: a NUL character"):
        build(Outer, {"name": "a\0b"}, "opts")
