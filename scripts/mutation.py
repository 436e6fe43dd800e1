"""Mutation testing of the judging core (issue 19): `make mutation`.

For each judging-core module this runs mutmut (pinned in the `mutation` extra) on the
functions that compute a figure, a threshold or a verdict, against a small, fast set of
unit tests, and prints one table row per module:

    mutants, killed, survived, equivalent, score = killed / (mutants - equivalent)

Why a scratch copy: mutmut writes every mutant into a `mutants/` tree and runs pytest
there. Doing that inside the checkout would leave a second copy of the package (and its
tests) where other tools and collaborators look; a copy under --workdir keeps the
checkout untouched, and a fresh copy per run means no stale cached verdict survives an
edit of the code or the tests.

Why per function, not per file: energy.py and onnx_backend.py also hold I/O (meters,
ONNX sessions); their mutants could only be killed by slow integration tests. Only the
arithmetic and the rules are listed below; a mutant of any other function is not made.

Mutants judged equivalent (no test can tell them apart: same behaviour) are listed with
their reason in tests/mutation_equivalent.txt; they are reported, and left out of the
score's denominator. A timeout counts as killed (the mutant made a test hang, which a
user would notice); "no tests" (no selected test runs the function) counts as survived.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENTS = ROOT / "tests" / "mutation_equivalent.txt"
# What the scratch copy needs to import the package and run its tests.
COPY = ("harness", "backends", "workloads", "tests", "pyproject.toml")


@dataclass(frozen=True)
class Target:
    """One judging-core module: which functions to mutate, which tests judge them."""

    name: str
    path: str                       # relative to the repository root
    functions: tuple[str, ...]      # "func" or "Class.method"; fnmatch patterns allowed
    tests: tuple[str, ...]          # test files or node ids: unit tests only, no model loads

    @property
    def module(self) -> str:
        return self.path[:-3].replace("/", ".")

    def mutant_globs(self) -> list[str]:
        # mutmut's names: module.x_func__mutmut_N, module.xǁClassǁmethod__mutmut_N
        out = []
        for f in self.functions:
            mangled = f"xǁ{f.split('.')[0]}ǁ{f.split('.')[1]}" if "." in f else f"x_{f}"
            out.append(f"{self.module}.{mangled}__mutmut_*")
        return out

    def wants(self, mutant: str) -> bool:
        return any(fnmatch.fnmatchcase(mutant, g) for g in self.mutant_globs())


TARGETS: tuple[Target, ...] = (
    Target("metrics", "harness/metrics.py", ("sample_summary", "cell_metrics"),
           ("tests/test_mut_metrics.py",)),
    Target("roofline", "harness/roofline.py",
           ("decode_limit_tps", "prefill_limit_s", "decode_ceiling", "_positive", "prefill_ceiling", "roofline",
            "side_suspect"),
           ("tests/test_mut_roofline.py", "tests/test_roofline.py")),
    Target("accuracy", "harness/accuracy.py", ("tolerance", "compare", "agreeing", "judge"),
           ("tests/test_mut_accuracy.py",)),
    Target("prices", "harness/report/prices.py", ("cost_per_million",),
           ("tests/test_mut_prices.py",)),
    Target("figures", "harness/figures.py",
           ("meter_figure", "is_estimate", "primary_keys", "is_marked", "meter_rank", "meter_candidates",
            "primary_meter", "metric_value", "improvement"),
           ("tests/test_mut_figures.py", "tests/test_meter_rule.py")),
    Target("energy", "harness/energy.py", ("batch_figures", "steady_figures", "_judge", "_div", "_fin"),
           ("tests/test_mut_energy.py",)),
    Target("verdicts", "harness/verdicts.py",
           ("_verdict_of", "_better", "_roofline_at", "_blocker", "_floor", "_allowed", "plain_median",
            "_as_joules", "gate_failures", "exit_code", "Verdict.failed_required"),
           ("tests/test_mut_verdicts.py",)),
    Target("stats", "harness/stats.py",
           ("median", "_clean", "Summary.rel_half_width", "stability", "_percentile_interval", "_quantile_rule",
            "_interpolate"),
           ("tests/test_mut_stats.py",)),
    Target("onnx_fallback", "backends/onnx_backend.py", ("summarize_placement", "fallback_refusal"),
           ("tests/test_mut_onnx_fallback.py",)),
)


@dataclass
class Row:
    name: str
    mutants: int = 0
    killed: int = 0
    survived: list[str] = field(default_factory=list)
    equivalent: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def score(self) -> float | None:
        denominator = self.mutants - len(self.equivalent)
        return self.killed / denominator if denominator else None


def load_equivalents(path: Path = EQUIVALENTS) -> dict[str, str]:
    """`mutant-name  reason` per line; `#` starts a comment line."""
    out: dict[str, str] = {}
    if not path.exists():
        return out
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, reason = line.partition(" ")
        if not reason.strip():
            raise SystemExit(f"error: {path}:{n}: mutant {name!r} has no reason (why is it equivalent?)")
        out[name] = reason.strip()
    return out


# mutmut's exit codes per mutant (mutmut/stats.py): 1, 3 killed; 0 survived; 33, 5 no tests;
# 36, 24, -24, 152, 255 timeout; anything else (segfault, suspicious) is not a kill we trust.
KILLED = {1, 3, 36, 24, -24, 152, 255}


def run_target(t: Target, workdir: Path, children: int, equivalents: dict[str, str]) -> Row:
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, workdir / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, workdir / name)
    # pyproject.toml has no [tool.mutmut], so mutmut reads this file.
    cfg = ["[mutmut]", "source_paths =", "    harness", "    backends", "    workloads",
           f"only_mutate = {t.path}", "pytest_add_cli_args_test_selection ="]
    cfg += [f"    {x}" for x in t.tests]
    (workdir / "setup.cfg").write_text("\n".join(cfg) + "\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(children),
                           *t.mutant_globs()], cwd=workdir, env=env, capture_output=True, text=True)
    row = Row(t.name, seconds=time.monotonic() - start)
    meta = workdir / "mutants" / (t.path + ".meta")
    if proc.returncode != 0 or not meta.exists():
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"error: mutmut failed on {t.path} (exit {proc.returncode}); see the output above")
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    for mutant, code in sorted(codes.items()):
        if not t.wants(mutant):
            continue
        row.mutants += 1
        if code in KILLED:
            row.killed += 1
        elif mutant in equivalents:
            row.equivalent.append(mutant)
        else:
            row.survived.append(mutant)
    return row


def table(rows: list[Row]) -> str:
    lines = ["| module | mutants | killed | survived | equivalent | score | time (s) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        score = "n/a" if r.score is None else f"{100 * r.score:.1f} %"
        lines.append(f"| {r.name} | {r.mutants} | {r.killed} | {len(r.survived)} | {len(r.equivalent)} "
                     f"| {score} | {r.seconds:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modules", nargs="*", help=f"subset of: {', '.join(t.name for t in TARGETS)}")
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "accel-mutation")
    ap.add_argument("--children", type=int, default=2, help="mutants tested in parallel")
    ap.add_argument("--min-score", type=float, default=0.90, help="exit 1 if a module scores below")
    ap.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = ap.parse_args(argv)
    known = {t.name: t for t in TARGETS}
    unknown = [m for m in args.modules if m not in known]
    if unknown:
        print(f"error: unknown module {unknown[0]!r}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    equivalents = load_equivalents()
    rows = []
    for t in [known[m] for m in args.modules] or list(TARGETS):
        print(f"mutating {t.path} ({', '.join(t.functions)}) ...", flush=True)
        rows.append(run_target(t, args.workdir / t.name, args.children, equivalents))
        r = rows[-1]
        print(f"  {r.mutants} mutants, {r.killed} killed, {len(r.survived)} survived, "
              f"{len(r.equivalent)} equivalent ({r.seconds:.0f} s)", flush=True)
    text = table(rows)
    details = []
    for r in rows:
        details += [f"survived  {m}" for m in r.survived]
        details += [f"equivalent {m}: {equivalents[m]}" for m in r.equivalent]
    print(text)
    if details:
        print("\n".join(details))
        print("(see one with: cd WORKDIR/MODULE && python -m mutmut show NAME)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n\n" + "\n".join(details) + "\n")
    low = [r.name for r in rows if r.score is not None and r.score < args.min_score]
    if low:
        print(f"below {100 * args.min_score:.0f} %: {', '.join(low)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
