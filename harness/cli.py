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
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
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
        print("interrupted: finished cells are saved; `harness run --resume RUN_DIR` runs the rest", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harness", description="Benchmark LLM inference on pluggable accelerator backends.")
    sub = p.add_subparsers(metavar="COMMAND")

    r = sub.add_parser("run", help="run a suite (default: the CPU smoke suite)")
    r.add_argument("suite", nargs="?", help="suite YAML file or shipped suite name (smoke, standard, procurement)")
    r.add_argument("--name", help="run folder name under the output folder (default: timestamp-suite)")
    r.add_argument("--output", help="output folder (default: the suite's `output`, results/)")
    r.add_argument("--resume", metavar="RUN_DIR", help="run only the cells of RUN_DIR that have no result")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_run)

    from harness.report.commands import add_commands

    add_commands(sub)  # report, compare, verify

    c = sub.add_parser("calibrate", help="measure a device's memory bandwidth and matmul rates (roofline basis)")
    c.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    c.add_argument("--output", default="results", help="results folder that holds calibration/ (default results)")
    c.add_argument("--quick", action="store_true", help="smaller buffers, shorter timing (CI)")
    c.set_defaults(func=cmd_calibrate)

    from harness.serve import add_serve_command

    add_serve_command(sub)

    e = sub.add_parser("env", help="print this machine's inventory")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_env)

    ls = sub.add_parser("list", help="list models, backends and suites")
    ls.set_defaults(func=cmd_list)
    return p


def _sigterm_as_interrupt() -> None:
    """A scheduler's SIGTERM stops a run like Ctrl-C: finished cells saved, status recorded."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def cmd_run(args) -> int:
    from harness.config import load_plan, resolve_suite_path
    from harness.results import load_run, safe_run_dir
    from harness.runner import new_run_id, run_plan

    t0 = time.time()
    _sigterm_as_interrupt()
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "suite.yaml").exists():
            raise UserError(f"{run_dir}: not a resumable run folder (no suite.yaml)")
        plan = load_plan(run_dir / "suite.yaml")
        plan.source = str(run_dir / "suite.yaml")
        run_plan(plan, run_dir=run_dir, quiet=args.quiet, resume=True)
    else:
        path = resolve_suite_path(args.suite)
        plan = load_plan(path)
        for note in plan.skipped:
            print(note, file=sys.stderr)
        if args.output:
            plan.suite.output = args.output
        run_dir = safe_run_dir(plan.suite.output, args.name or new_run_id(plan.suite.name))
        # run_plan locks the folder, then refuses one that already holds a run.json: a check
        # here, before the lock, would race a second run of the same name
        run_plan(plan, run_dir=run_dir, quiet=args.quiet)
    _, records = load_run(run_dir)
    _print_records(records, title=f"{plan.suite.name}: {run_dir}")
    failed = sum(r.failed for r in records)
    invalid = sum(r.status == "invalid" for r in records)
    print(f"{len(records)} cells ({failed} failed, {invalid} invalid) in {time.time() - t0:.1f} s; results in {run_dir}")
    return 1 if failed == len(records) and records else 0


def _print_records(records, title=None) -> None:
    from harness.report.scenario_table import scenario_rows
    from harness.report.table import bench_rows, print_table

    offline = [r for r in records if not r.is_request_scenario]
    loaded = [r for r in records if r.is_request_scenario]
    if offline or not loaded:
        print_table(bench_rows(offline), title=title)
    if loaded:
        print_table(scenario_rows(loaded), title=f"{title} (request-level scenarios)" if title else None)


def cmd_calibrate(args) -> int:
    import torch

    from harness.calibrate import calibrate, save

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: this torch ({torch.__version__}) sees no CUDA device")
    cal = calibrate(args.device, quick=args.quick)
    path = save(cal, args.output)
    print(f"{cal['device']} on {cal['host']}: copy bandwidth {cal['memory_bandwidth_Bps'] / 1e9:.1f} GB/s "
          "(bytes read + written)")
    for dt, v in cal["matmul_flops"].items():
        print(f"  matmul {dt}: {v / 1e12:.2f} TFLOP/s" if v else f"  matmul {dt}: unavailable")
    print(f"saved {path}; later runs on this host and device show roofline %")
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
