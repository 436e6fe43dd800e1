"""The `make mutation` driver (scripts/mutation.py): how it reads the equivalents list and
scores a module. The mutation run itself is not part of `make test` (minutes per module)."""
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("mutation_driver", ROOT / "scripts" / "mutation.py")
M = importlib.util.module_from_spec(spec)
sys.modules["mutation_driver"] = M  # dataclasses look their module up there
spec.loader.exec_module(M)


def test_equivalents_need_a_reason(tmp_path):
    f = tmp_path / "eq.txt"
    f.write_text("# comment\n\nharness.x.x_f__mutmut_1 same result\n")
    assert M.load_equivalents(f) == {"harness.x.x_f__mutmut_1": "same result"}
    f.write_text("harness.x.x_f__mutmut_1 ok\nharness.x.x_f__mutmut_2\n")
    with pytest.raises(SystemExit) as e:
        M.load_equivalents(f)
    assert str(e.value) == f"error: {f}:2: mutant 'harness.x.x_f__mutmut_2' has no reason (why is it equivalent?)"


def test_every_listed_equivalent_names_a_mutated_function():
    targets = M.TARGETS
    for name in M.load_equivalents():
        assert any(t.wants(name) for t in targets), name


def test_mutant_names_of_functions_and_methods():
    t = M.Target("x", "harness/stats.py", ("median", "Summary.rel_half_width"), ())
    assert t.module == "harness.stats"
    assert t.wants("harness.stats.x_median__mutmut_3")
    assert t.wants("harness.stats.xǁSummaryǁrel_half_width__mutmut_1")
    assert not t.wants("harness.stats.x_median_of__mutmut_1")
    assert not t.wants("harness.stats.x_summarize__mutmut_1")


def test_score_leaves_equivalents_out():
    r = M.Row("m", mutants=20, killed=18, survived=["a"], equivalent=["b"])
    assert r.score == pytest.approx(18 / 19)
    assert M.Row("m").score is None
    text = M.table([r])
    assert "| m | 20 | 18 | 1 | 1 | 94.7 % |" in text
