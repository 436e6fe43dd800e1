"""`harness report`, `harness compare` and `harness verify`: the documents people act on.

harness.cli calls ``add_commands(subparsers)``. User mistakes raise
harness.results.ResultsError (a run folder, an output path) or harness.schema.ConfigError
(a claims or prices file, every problem as file:line: key: expected), which the CLI
prints without a traceback, with exit status 2.

  harness report RUN... [--out DIR] [--prices FILE] [--timeline CELL_ID] [--claims FILE]
  harness compare RUN_A RUN_B [...] [--markdown FILE] [--metric NAME ...] [--against-first]
  harness verify CLAIMS.yaml RUN... [--markdown FILE] [--strict]

verify exits 1 when a claim marked `required: true` is REFUTED or IMPLAUSIBLE, or matched no
measured cell (with --strict: when it is anything but SUPPORTED), 0 otherwise.
"""
from __future__ import annotations

from pathlib import Path

from harness.results import ResultsError


def add_commands(subparsers) -> None:
    rep = subparsers.add_parser(
        "report", help="Markdown + self-contained HTML report of one or more run folders",
        description="Write report.md (figures in plots/ beside it) and report.html (everything embedded) covering "
                    "the llama-bench table per device with intervals, energy provenance, procurement figures, "
                    "throughput/energy against batch, latency trade-offs with Pareto fronts and a power timeline.")
    rep.add_argument("runs", nargs="+", metavar="RUN", help="run folder(s) (results/<run-id>)")
    rep.add_argument("--out", metavar="DIR", help="output folder (default: RUN/report of the first run)")
    rep.add_argument("--prices", metavar="FILE", help="prices YAML for cost per million tokens "
                                                      "(see workloads/prices.example.yaml)")
    rep.add_argument("--timeline", metavar="CELL_ID", help="cell whose power timeline to plot, e.g. "
                                                           "torch-cpu/tiny/fp32/b1/p64/g32/offline (default: the "
                                                           "cell with the most power samples)")
    rep.add_argument("--claims", metavar="FILE", help="also judge the claims of this file in the report")
    rep.add_argument("--print", dest="print_table", action="store_true", help="also print the tables to the terminal")
    rep.add_argument("--quiet", action="store_true", help="no progress bar")
    rep.set_defaults(func=cmd_report)

    cmp = subparsers.add_parser(
        "compare", help="matching cells of several runs side by side, with ratios and intervals",
        description="Like with like: each backend of the later runs is compared with the same backend name in the "
                    "first run (the same suite on two machines, or before / after a change), on the cells they share "
                    "(same model, precision, batch, prompt and generation length, scenario). With --against-first, "
                    "or when no backend name is shared (one run holding two backends), the first configuration "
                    "(run, backend, device) is the reference A for every other one.")
    cmp.add_argument("runs", nargs="+", metavar="RUN", help="run folders (one is enough if it holds two backends)")
    cmp.add_argument("--markdown", metavar="FILE", help="also write the comparison as Markdown")
    cmp.add_argument("--against-first", action="store_true",
                     help="compare every configuration with the first one (run, backend, device), whatever its "
                          "backend, instead of each backend with the same backend name in the first run")
    cmp.add_argument("--same-backend", action="store_true",
                     help="the default, kept for old scripts: each backend of the later runs against the same backend "
                          "name in the first run")
    cmp.add_argument("--metric", action="append", metavar="NAME",
                     help="metric(s) to compare (default: decode_tps prefill_tps ttft_s tpot_s tokens_per_joule "
                          "j_per_token)")
    cmp.add_argument("--quiet", action="store_true", help="no progress bar")
    cmp.set_defaults(func=cmd_compare)

    ver = subparsers.add_parser(
        "verify", help="judge efficiency claims against measured runs (SUPPORTED / REFUTED / INCONCLUSIVE)",
        description="Each claim's verdict comes from the 95 % interval of the measured ratio: SUPPORTED when its "
                    "lower bound reaches the factor, REFUTED when its upper bound is below it, INCONCLUSIVE "
                    "otherwise. Exit status 1 when a required claim is REFUTED or IMPLAUSIBLE, or matched no measured "
                    "cell.")
    ver.add_argument("claims", metavar="CLAIMS.yaml", help="claims file (see workloads/claims.example.yaml)")
    ver.add_argument("runs", nargs="*", metavar="RUN", help="run folder(s) holding the measurements (none: claims "
                                                          "on catalog devices and external figures only)")
    ver.add_argument("--markdown", metavar="FILE",
                     help="where to write the verdicts as Markdown (default: RUN/verdicts-<claims>.md of the first run)")
    ver.add_argument("--strict", action="store_true", help="exit 1 also when a required claim is INCONCLUSIVE")
    ver.set_defaults(func=cmd_verify)


def _check_runs(runs: list[str]) -> None:
    for r in runs:
        p = Path(r)
        if not p.is_dir():
            raise ResultsError(f"{r}: no such run folder")
        if not (p / "run.json").exists():
            raise ResultsError(f"{r}: not a run folder (no run.json)")


def _write(path: Path, text: str) -> None:
    """--markdown and verdicts files: an existing symlink is refused (a run folder from
    elsewhere may hold verdicts-*.md as a link to a file outside it)."""
    from harness.results import write_bytes_nofollow

    if path.is_symlink():
        raise ResultsError(f"{path}: is a symbolic link; refusing to write through it (remove it or pick "
                           "another file)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_nofollow(path, text.encode())
    except OSError as e:
        raise ResultsError(f"{path}: cannot write ({e.strerror or e})") from None


def _freeze_loaded_records(args) -> None:
    """Run as the program, this process ends with its command: loaded records may then be
    set aside from the cyclic collector (harness.cells.FREEZE_LOADED_RECORDS; a sixth of a
    large report's CPU). Not when called in-process with an argv (tests)."""
    if getattr(args, "as_program", False):
        import harness.cells

        harness.cells.FREEZE_LOADED_RECORDS = True


def cmd_report(args) -> int:
    _freeze_loaded_records(args)
    from harness.report.progress import Stages
    from harness.report.run_report import REPORT_STAGES, build_report_parts, write_report

    _check_runs(args.runs)
    # work of more than a couple of seconds at thousands of cells: a bar on stderr (terminal only)
    with Stages(REPORT_STAGES + 1, quiet=args.quiet) as progress:
        parts = build_report_parts(args.runs, prices_path=args.prices, timeline_cell=args.timeline,
                                   claims_path=args.claims, progress=progress)
        doc = parts.doc
        progress.stage("writing report.md and report.html")
        out = Path(args.out) if args.out else Path(args.runs[0]) / "report"
        md, html = write_report(doc, out)
    if args.print_table:
        from harness.report.table import bench_rows, print_table

        # what the report puts first comes first here too: verdicts, then the procurement headline
        if parts.verdicts is not None:
            print_verdicts(parts.verdicts)
        print_doc_table(parts.headline, "at a glance: per device, best tokens/J and cost per 1M tokens, with the meter")
        print_table(bench_rows(list(doc.cells), ci=True), title=doc.title)
    print(f"wrote {md} (figures in {md.parent / 'plots'})")
    print(f"wrote {html} (self-contained: open it in any browser, no network needed)")
    return 0


def cmd_compare(args) -> int:
    _freeze_loaded_records(args)
    from harness.cells import load_cells
    from harness.figures import METRICS, canonical_metric
    from harness.report.compare import COMPARE_METRICS, build_compare, compare_markdown, print_compare

    from harness.report.progress import Stages

    _check_runs(args.runs)
    metrics = COMPARE_METRICS
    if args.metric:
        metrics = tuple(canonical_metric(m) for m in args.metric)
        bad = [m for m in metrics if m not in METRICS]
        if bad:
            raise ResultsError(f"--metric {bad[0]}: expected one of {', '.join(METRICS)}")
    with Stages(3, quiet=args.quiet) as progress:
        progress.stage("reading records")
        cells = load_cells(args.runs)
        progress.stage(f"comparing {len(cells)} cells")
        cmp = build_compare(cells, metrics, same_backend=args.same_backend, against_first=args.against_first)
        progress.stage("writing")
        text = compare_markdown(cmp) if args.markdown else None
    print_compare(cmp, args.markdown)
    if args.markdown:
        _write(Path(args.markdown), text)
        print(f"wrote {args.markdown}")
    return 0


def cmd_verify(args) -> int:
    _freeze_loaded_records(args)
    from harness.cells import load_cells
    from harness.claims import load_claims
    from harness.verdicts import exit_code, gate_failures, verdicts_markdown, verify

    claims = load_claims(args.claims)  # check the claims file before touching any run
    _check_runs(args.runs)
    cells = load_cells(args.runs)
    verdicts = verify(claims, cells)
    print_verdicts(verdicts)
    from harness.seal import runs_block  # issue 17: each run's lab, node(s) and check status, marked

    for line in runs_block(args.runs, cells) if args.runs else []:
        print(line)
    md = Path(args.markdown) if args.markdown else Path(args.runs[0] if args.runs else ".") / \
        f"verdicts-{Path(args.claims).stem}.md"
    _write(md, verdicts_markdown(verdicts) + "".join(f"{line}\n" for line in runs_block(args.runs, cells, True))
           if args.runs else verdicts_markdown(verdicts))
    print(f"wrote {md} (the verdicts as Markdown)")
    code = exit_code(verdicts, strict=args.strict)
    if code:
        failing = gate_failures(verdicts, strict=args.strict)
        empty = [v for v in failing if v.no_data]  # matched no measured cell: said apart, with why
        bad = [v for v in failing if not v.no_data]
        if bad:
            print(f"{len(bad)} required claim(s) {'not supported' if args.strict else 'refuted'}: "
                  + "; ".join(v.claim.name for v in bad))
        for v in empty:
            print(f"required claim {v.claim.name!r} matched no data ({v.reason}): the gate fails")
    return code


def print_doc_table(table, title: str) -> None:
    """A report Table (harness.report.document) on the terminal, cells wrapped, never cut."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=max(150, Console().width))
    t = Table(title=title, title_justify="left", show_lines=True)
    for col in table.columns:
        t.add_column(escape(col), justify="right" if col in table.right else "left", overflow="fold")
    for row in table.rows:
        t.add_row(*(escape(v) for v in row))
    console.print(t)
    if table.caption:
        console.print(escape(table.caption), style="dim", highlight=False)


def print_verdicts(verdicts) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from harness.verdicts import shown_ratio, verdict_lines

    console = Console(width=max(150, Console().width))
    colors = {"SUPPORTED": "green", "REFUTED": "red", "INCONCLUSIVE": "yellow", "IMPLAUSIBLE": "magenta"}
    t = Table(title="claim verdicts", title_justify="left")
    for col, just in (("#", "right"), ("claim", "left"), ("metric", "left"), ("factor", "right"),
                      ("measured [95% CI]", "right"), ("verdict", "left"), ("required", "left")):
        t.add_column(col, justify=just)
    for i, v in enumerate(verdicts, 1):
        c = colors[v.verdict]
        t.add_row(str(i), escape(v.claim.name), v.claim.metric, f">= {v.claim.at_least:g}x",
                  escape(shown_ratio(v)), f"[bold {c}]{v.verdict}[/bold {c}]",
                  "yes" if v.claim.required else "no")
    console.print(t)
    for i, v in enumerate(verdicts, 1):
        c = colors[v.verdict]
        console.print(f"\n[bold]{i}. {escape(v.claim.name)}[/bold]: [bold {c}]{v.verdict}[/bold {c}]")
        for line in verdict_lines(v, html_escape=False)[1:]:  # a terminal shows ">=", not "&gt;="
            console.print(escape(line.replace("**", "")), highlight=False, soft_wrap=True)
