"""`harness` command line: run | report | compare | verify | calibrate | env | list."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
import sys
import time

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake in what the user asked: printed as one clear message, no traceback."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # argv None: run as the program (console script, python -m harness), whose process ends
    # with the command; a caller passing argv (tests, scripts) may live on after it
    program = argv is None
    args = parser.parse_args(argv)
    args.as_program = program
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        print("error: no command given: choose one of those above (harness run runs the smoke suite)",
              file=sys.stderr)
        return EXIT_USER_ERROR
    from harness.registry import RegistryError
    from harness.results import ResultsError
    from harness.schema import ConfigError

    try:
        return args.func(args) or 0
    except ConfigError as e:  # every problem of a suite, claims, prices or options file, one per line
        print(f"error: {len(e.problems)} problem{'s' if len(e.problems) != 1 else ''}:\n{e}"
              if len(e.problems) > 1 else f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (UserError, RegistryError, ResultsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)  # `harness run` names its folder itself (cmd_run)
        return 130


def _shipped_suites() -> str:
    from harness.config import SUITES_DIR

    return ", ".join(sorted(f.stem for f in SUITES_DIR.glob("*.yaml"))) or "none found"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harness", description="Benchmark LLM inference on pluggable accelerator backends.")
    sub = p.add_subparsers(metavar="COMMAND")

    r = sub.add_parser("run", help="run a suite (default: the CPU smoke suite)")
    r.add_argument("suite", nargs="?", help="suite YAML file or shipped suite name (" + _shipped_suites() + ")")
    r.add_argument("--name", help="run folder name under the output folder (default: timestamp-suite)")
    r.add_argument("--output", help="output folder (default: the suite's `output`, results/)")
    r.add_argument("--resume", metavar="RUN_DIR",
                   help="run only the cells of RUN_DIR that have no result, with the suite the run started with "
                        "(RUN_DIR/suite.yaml, or SUITE when given); a suite that changed is refused unless --force")
    r.add_argument("--force", action="store_true",
                   help="with --resume: run a changed suite; cells whose settings changed run again and their old "
                        "records (and those of cells no longer planned) move to results.superseded.jsonl")
    r.add_argument("--retry-failed", action="store_true",
                   help="with --resume: run failed cells again (their new record supersedes the failure)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--lab", metavar="NAME", help="the lab that runs it, shown by reports and sealed with the run "
                                                 "(overrides the suite's `lab:`)")
    r.add_argument("--cluster", metavar="ADDRESS",
                   help="run the groups on a Ray cluster (host:port of its head, or `auto`; needs the [fleet] "
                        "extra); overrides the suite's `cluster:`")
    r.add_argument("--dry-run", action="store_true",
                   help="validate the suite and print the planned cells; make no run folder, start no worker")
    r.set_defaults(func=cmd_run)

    from harness.report.commands import add_commands

    add_commands(sub)  # report, compare, verify

    from harness.bound_cli import add_bound_command

    add_bound_command(sub)  # bound: physical limits per device and workload, from the catalog

    from harness.seal_cli import add_seal_commands

    add_seal_commands(sub)  # seal, check: results that travel between labs

    c = sub.add_parser("calibrate", help="measure a device's read and copy bandwidth and matmul rates (roofline basis)")
    c.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    c.add_argument("--output", default="results", help="results folder that holds calibration/ (default results)")
    c.add_argument("--quick", action="store_true", help="smaller buffers, shorter timing (CI)")
    c.set_defaults(func=cmd_calibrate)

    from harness.serve import add_serve_command

    add_serve_command(sub)

    from harness.importers import add_import_command

    add_import_command(sub)  # import: other tools' exports (aiperf, guidellm) as result folders

    e = sub.add_parser("env", help="print this machine's inventory")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_env)

    ls = sub.add_parser("list", help="list models, backends and suites")
    ls.set_defaults(func=cmd_list)
    return p


def _sigterm_as_interrupt() -> None:
    """A scheduler's SIGTERM, or SIGHUP (the terminal or ssh session closed), stops a run
    like Ctrl-C: finished cells saved, run.json says interrupted, exit 130. Once: a second
    signal during that cleanup would cut the run.json write short."""
    import signal

    stop = (signal.SIGTERM, signal.SIGHUP)

    def handler(signum, frame):
        for s in stop:
            signal.signal(s, signal.SIG_IGN)
        raise KeyboardInterrupt

    for s in stop:
        signal.signal(s, handler)


#: rows of the --dry-run table before "... and N more": enough to check a sweep's shape
DRY_RUN_ROWS = 40


def _resume_plan(args):
    """The plan a resume runs: SUITE when given, else RUN_DIR/suite.yaml."""
    from harness.config import load_plan, resolve_suite_path

    run_dir = Path(args.resume)
    if not (run_dir / "run.json").is_file() or not (run_dir / "suite.yaml").is_file():
        raise UserError(f"{run_dir}: not a resumable run folder (no run.json or suite.yaml)")
    if args.name or args.output:
        raise UserError("--resume RUN_DIR names the run folder; --name and --output do not go with it")
    path = resolve_suite_path(args.suite) if args.suite else run_dir / "suite.yaml"
    plan = load_plan(path)
    plan.source = str(path)
    plan.suite.output = str(run_dir.parent)  # where the folder is (calibrations are looked up there)
    return run_dir, plan


def cmd_dry_run(args) -> int:
    """Validate and plan only: nothing is written, no worker (and no torch) is started."""
    from harness.config import load_plan, resolve_suite_path
    from harness.results import safe_run_dir

    if args.resume:
        return _dry_run_resume(args)
    path = resolve_suite_path(args.suite)
    plan = load_plan(path)
    for note in plan.skipped:
        print(note, file=sys.stderr)
    output = args.output or plan.suite.output
    # the folder name a run would make, refused here as the run would refuse it (a bad
    # --name, or a suite name that cannot be part of one)
    from harness.runner import new_run_id

    where = safe_run_dir(output, args.name or new_run_id(plan.suite.name))
    _print_plan(plan.cells)
    print(f"{len(plan.cells)} cell{'s' if len(plan.cells) != 1 else ''} planned from {path} "
          f"(suite {plan.suite.name!r}, {plan.suite.repetitions} repetitions each); "
          f"a run would write {where}; dry run: nothing written")
    return 0


def _dry_run_resume(args) -> int:
    """What `--resume` would run, read without the lock and without changing the folder."""
    from harness.results import read_records, read_run_json
    from harness.resume import decide, planned_config

    run_dir, plan = _resume_plan(args)
    d = decide(plan.cells, planned_config(plan.suite), read_run_json(run_dir),
               read_records(run_dir / "results.jsonl"), args.force, args.retry_failed, str(run_dir))
    for line in d.changes:
        print(f"--force: {line}")
    for line in d.cosmetic:
        print(f"suite changed (no cell's measurement depends on it): {line}")
    if d.superseded:
        print(f"--force: records of {len(d.superseded)} cells would move to results.superseded.jsonl")
    _print_plan(d.todo)
    print(f"{len(d.todo)} of {len(plan.cells)} cells would run ({len(d.retried)} failed cells again, "
          f"{len(d.failed_kept)} failed cells kept); dry run: nothing written")
    return 0


def _print_plan(cells) -> None:
    cols = ("backend", "model", "dtype", "batch", "prompt", "gen", "scenario")
    rows = [(c.backend, c.model, c.dtype, str(c.batch), str(c.prompt_len), str(c.gen_len), c.scenario)
            for c in cells[:DRY_RUN_ROWS]]
    widths = [min(40, max([len(h)] + [len(r[i]) for r in rows])) for i, h in enumerate(cols)]
    for row in [cols, *rows]:
        print("  ".join(v[:40].ljust(w) for v, w in zip(row, widths)).rstrip())
    if len(cells) > DRY_RUN_ROWS:
        print(f"... and {len(cells) - DRY_RUN_ROWS} more")


def cmd_run(args) -> int:
    if getattr(args, "lab", None) is not None and args.resume:
        raise UserError("--lab names the lab of a new run; a resumed run keeps the lab it was started with")
    if (args.force or args.retry_failed) and not args.resume:
        raise UserError(f"{'--force' if args.force else '--retry-failed'} goes with --resume RUN_DIR")
    if args.dry_run:
        return cmd_dry_run(args)
    from harness.results import load_run
    from harness.runner import run_plan
    from harness.storage import StorageFault

    t0 = time.time()
    _sigterm_as_interrupt()
    run_dir, plan = _resume_plan(args) if args.resume else _new_run_plan(args)
    try:
        # a new run: run_plan locks the folder, then refuses one that already holds a
        # run.json (a check here, before the lock, would race a second run of the same name)
        run_plan(plan, run_dir=run_dir, quiet=args.quiet, resume=bool(args.resume), force=args.force,
                 retry_failed=args.retry_failed, cluster=getattr(args, "cluster", None))
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM or SIGHUP: name the folder to resume, not a placeholder
        print(f"interrupted: finished cells are saved; `harness run --resume {run_dir}` runs the rest",
              file=sys.stderr)
        return 130
    except StorageFault as e:  # not the user's input: exit 1; the folder holds whole records only
        print(f"error: {run_dir}: {e.reason}; finished cells are saved and the cell in flight was not recorded: "
              f"make room (or make the folder writable), then `harness run --resume {run_dir}` runs the rest",
              file=sys.stderr)
        return 1
    meta, records = load_run(run_dir)
    _print_records(Path(run_dir), meta, records, title=f"{plan.suite.name}: {run_dir}")
    failed = sum(r.failed for r in records)
    invalid = sum(r.status == "invalid" for r in records)
    print(f"{len(records)} cells ({failed} failed, {invalid} invalid) in {time.time() - t0:.1f} s; results in {run_dir}")
    return 1 if failed == len(records) and records else 0


def _new_run_plan(args):
    from harness.config import load_plan, resolve_suite_path
    from harness.results import safe_run_dir
    from harness.runner import new_run_id

    plan = load_plan(resolve_suite_path(args.suite))
    for note in plan.skipped:
        print(note, file=sys.stderr)
    if args.output:
        plan.suite.output = args.output
    if getattr(args, "lab", None) is not None:  # issue 17: run.json's config.lab, as the suite's `lab:` would be
        if not args.lab.isprintable() or len(args.lab) > 200:
            raise UserError("--lab: expected a printable name of at most 200 characters")
        plan.suite.lab = args.lab
    return safe_run_dir(plan.suite.output, args.name or new_run_id(plan.suite.name)), plan


def _print_records(run_dir: Path, meta: dict, records, title=None) -> None:
    """The table `harness run` ends with: its cells with their run.json, so each J/token
    honours the suite's `primary: true` meter as `harness report` does (figures.primary_meter)."""
    from harness.cells import ResultCell
    from harness.report.scenario_table import scenario_rows
    from harness.report.table import bench_rows, print_table

    offline = [r for r in records if not r.is_request_scenario]
    loaded = [r for r in records if r.is_request_scenario]
    if offline or not loaded:
        run_id = meta.get("run_id") or run_dir.name  # load_run checked: a string when present
        print_table(bench_rows([ResultCell(run_id, run_dir, meta, r) for r in offline]), title=title)
    if loaded:
        print_table(scenario_rows(loaded), title=f"{title} (request-level scenarios)" if title else None)


def cmd_calibrate(args) -> int:
    import torch

    from harness.calibrate import calibrate, save

    try:
        kind = torch.device(args.device).type
    except (RuntimeError, ValueError, TypeError) as e:
        raise UserError(f"--device {args.device[:80]!r}: not a torch device ({str(e).splitlines()[0][:200]})") \
            from None
    if kind not in ("cpu", "cuda"):
        raise UserError(f"--device {args.device[:80]!r}: calibrate measures cpu or cuda[:N]")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: this torch ({torch.__version__}) sees no CUDA device")
    cal = calibrate(args.device, quick=args.quick)
    paths = save(cal, args.output)
    print(f"{cal['device']} on {cal['host']}: read bandwidth {cal['read_bandwidth_Bps'] / 1e9:.1f} GB/s "
          f"({cal['read_kernel']}, noise margin {100 * cal['read_noise']:.1f} %; the decode roofline)")
    print(f"  copy bandwidth {cal['memory_bandwidth_Bps'] / 1e9:.1f} GB/s (bytes read + written; information only)")
    if cal.get("llc_bytes"):
        print(f"  last-level cache {cal['llc_bytes'] / 2**20:.0f} MiB (smaller models are cache-resident)")
    for dt, v in cal["matmul_flops"].items():
        # three significant digits: a dtype without native kernels here (fp16 on most CPUs)
        # runs at GFLOP/s, which two decimals of TFLOP/s printed as 0.00
        unit = "TOP/s" if dt == "int8" else "TFLOP/s"
        kernel = (cal.get("matmul_kernels") or {}).get(dt)
        print(f"  matmul {dt}: {v / 1e12:.3g} {unit}" + (f" ({kernel})" if kernel else "") if v
              else f"  matmul {dt}: unavailable")
    for note in cal.get("notes", []):
        print(f"  note: {note}")
    print(f"saved {', '.join(map(str, paths))}; later runs on this host and device show roofline %")
    return 0


def cmd_env(args) -> int:
    from harness.inventory import inventory

    inv = inventory()
    if args.json:
        print(json.dumps(inv, indent=2))
        return 0
    print(f"host      {inv['hostname']}  ({inv['os']})")
    c = inv["cpu"]
    print(f"cpu       {c['model']}: {c['physical_cores']} cores, {c['logical_cores']} threads, {c['affinity']} usable")
    print(f"memory    {inv['memory_bytes'] / 2**30:.1f} GiB")
    for g in inv["gpus"] or [None]:
        print("gpu       " + (f"{g['index']}: {g['name']}, {g['memory_bytes'] / 2**30:.0f} GiB, driver {g['driver']}"
                             if g else "none visible through NVML"))
    print(f"python    {inv['python']}")
    for k, v in inv["packages"].items():
        print(f"  {k:<22} {v}")
    print(f"git       {inv['git_commit'] or 'unknown'}")
    return 0


def cmd_list(args) -> int:
    from harness.config import SUITES_DIR
    from harness.registry import RegistryError, backend_entry_points, load_backend_class
    from workloads.zoo import DTYPE_BYTES, ZOO

    print("models (weights per dtype):")
    print(f"  {'name':<15} {'params':>10} " + " ".join(f"{d:>9}" for d in DTYPE_BYTES))
    for name, a in ZOO.items():
        sizes = " ".join(f"{a.weight_bytes(d) / 1e9:8.3f}G" if a.weight_bytes(d) >= 1e8 else f"{a.weight_bytes(d) / 1e6:8.2f}M"
                         for d in DTYPE_BYTES)
        print(f"  {name:<15} {a.param_count() / 1e6:9.1f}M {sizes}")
    print("backends:")
    for name, target in sorted(backend_entry_points().items()):
        try:
            cls = load_backend_class(name)
            extra = f"; {cls.installed_here()}" if cls.installed_here() else ""
            print(f"  {name:<15} {target}  {cls.kind} backend; dtypes: {', '.join(cls.dtypes)}{extra}")
        except RegistryError as e:
            print(f"  {name:<15} {target}  (not usable here: {e})")
    from harness.registry import load_scenario_class, scenario_entry_points

    print("scenarios:")
    for name, target in sorted(scenario_entry_points().items()):
        try:
            cls = load_scenario_class(name)
            print(f"  {name:<15} {target}  drives: {', '.join(cls.backend_kinds)} backends")
        except RegistryError as e:
            print(f"  {name:<15} {target}  (not usable here: {e})")
    print("suites:")
    for f in sorted(SUITES_DIR.glob("*.yaml")):
        print(f"  {f.stem:<15} {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
