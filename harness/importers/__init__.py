"""`harness import`: another tool's measurements as a results folder, so that they appear
in `harness report`, `harness compare` and `harness verify` beside the harness's own runs.

    harness import profile_export.jsonl --model llama-3.1-8b --dtype bf16    # aiperf
    harness import benchmarks.json --model llama-3.1-8b --dtype bf16          # guidellm

Each benchmark of the export becomes one request-scenario cell (aiperf: the file; guidellm:
one per strategy), its figures recomputed with the harness's definitions from the tool's
per-request timings, and labelled with the tool that measured it: ``backend_type:
imported:<tool>``, ``sut.measured_by``, a warning on the cell, and an ``imported`` block
in run.json with the source file's SHA-256. Exports are untrusted input: bounded reads,
typed checks, and a bad file is refused with exit 2 and ``file:line: key: what was
expected`` (harness.importers.common).

The CLI registers with one line in harness/cli.py ``_parser``::

    from harness.importers import add_import_command; add_import_command(sub)
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
from pathlib import Path
import re
import time

from .common import ImportFormatError, Labels, build_record

TOOLS = ("aiperf", "guidellm")
_SCENARIO = re.compile(r"^(single-stream|concurrency|throughput|(server|constant)@\d+(\.\d+)?)$")


def _positive_int(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number > 0, got {v!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"expected a whole number > 0, got {v!r}")
    return n


def _rate(v: str) -> float:
    try:
        r = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected requests/s > 0, got {v!r}") from None
    if not (r > 0 and r != float("inf")):
        raise argparse.ArgumentTypeError(f"expected requests/s > 0, got {v!r}")
    return r


def add_import_command(sub) -> None:
    p = sub.add_parser("import", help="import aiperf's profile_export.jsonl or guidellm's benchmarks JSON "
                                      "as a results folder")
    p.add_argument("file", help="aiperf profile_export.jsonl, or guidellm benchmarks.json")
    p.add_argument("--tool", choices=("auto",) + TOOLS, default="auto", help="which tool wrote FILE (default: detect)")
    p.add_argument("--name", help="run folder name (default: import-TOOL-TIMESTAMP)")
    p.add_argument("--output", default="results", help="results folder (default results)")
    p.add_argument("--model", help="model name, as the harness run to compare with names it (e.g. llama-3.1-8b)")
    p.add_argument("--dtype", default="unknown", help="precision label, as in that run (e.g. bf16)")
    p.add_argument("--backend", help="backend label in tables (default: the tool's name)")
    p.add_argument("--device", help="device label (default: endpoint:HOST:PORT of the URL the export names, "
                                    "as the openai-http backend labels that server; else endpoint)")
    p.add_argument("--batch", type=_positive_int,
                   help="concurrency label (default: the tool's, else the peak requests in flight)")
    p.add_argument("--prompt-len", type=_positive_int, help="prompt length label (default: median prompt tokens)")
    p.add_argument("--gen-len", type=_positive_int, help="generation length label (default: median output tokens)")
    p.add_argument("--scenario", help="aiperf only: scenario label (concurrency, single-stream, server@RATE); "
                                      "default concurrency")
    p.add_argument("--rate", type=_rate, help="aiperf only: the request rate it was run at (scenario server@RATE)")
    p.set_defaults(func=cmd_import)


def detect(path: Path) -> str:
    from . import aiperf, guidellm

    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError as e:
        raise ImportFormatError(f"{path}: cannot read ({e.strerror or e})") from None
    if aiperf.looks_like(head.split(b"\n", 1)[0]):
        return "aiperf"
    if guidellm.looks_like(head):
        return "guidellm"
    raise ImportFormatError(f"{path}:1: cannot tell which tool wrote this file (expected aiperf's "
                            "profile_export.jsonl or guidellm's benchmarks JSON); give --tool")


def import_file(path: str | Path, output: str | Path = "results", name: str | None = None, tool: str = "auto",
                labels: Labels | None = None, scenario: str | None = None, rate: float | None = None) -> Path:
    """Read an export and write it as a run folder; returns the folder."""
    from harness import __version__
    from harness.results import append_record, safe_run_dir, write_json_atomic

    from . import aiperf, guidellm

    path = Path(path)
    tool = detect(path) if tool == "auto" else tool
    if scenario is not None and not _SCENARIO.fullmatch(scenario):
        raise ImportFormatError(f"--scenario: expected single-stream, concurrency, throughput or server@RATE, "
                                f"got {scenario!r}")
    if tool == "aiperf":
        if rate is not None and scenario is None:
            scenario = f"server@{rate:g}"
        cells = aiperf.read(path, scenario=scenario, concurrency=(labels.batch if labels else None), rate=rate)
    else:
        if scenario is not None or rate is not None:
            raise ImportFormatError("--scenario and --rate are for aiperf exports; guidellm's JSON names its strategy")
        cells = guidellm.read(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    source = {"source_file": str(path), "source_sha256": digest.hexdigest(),
              "imported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    labels = labels or Labels()
    records = [build_record(c, labels, source) for c in cells]
    ids = [r.cell_id for r in records]
    dup = next((i for i in ids if ids.count(i) > 1), None)
    if dup:
        raise ImportFormatError(f"{path}: two benchmarks make the same cell {dup!r} (same strategy twice?); "
                                "import them from separate files")
    run_id = name or f"import-{tool}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = safe_run_dir(output, run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / "run.json").exists() or (run_dir / "results.jsonl").exists():
        raise ImportFormatError(f"{run_dir}: already holds a run; choose another --name")
    started = min((r.started_at for r in records if r.started_at is not None), default=None)
    meta = {"run_id": run_id, "suite": f"imported from {tool}", "suite_file": str(path),
            "harness_version": __version__, "started_at": started, "status": "complete",
            "imported": {"tool": tool, "tool_version": cells[0].tool_version, **source},
            "inventory": {"hostname": f"{tool} export", "gpus": []},
            "config": {"name": f"imported from {tool}", "repetitions": None}}
    for r in records:
        append_record(run_dir / "results.jsonl", r)
    write_json_atomic(run_dir / "run.json", meta)
    return run_dir


def cmd_import(args) -> int:
    labels = Labels(backend=args.backend, model=args.model, dtype=args.dtype, device=args.device, batch=args.batch,
                    prompt_len=args.prompt_len, gen_len=args.gen_len)
    run_dir = import_file(args.file, output=args.output, name=args.name, tool=args.tool, labels=labels,
                          scenario=args.scenario, rate=args.rate)
    from harness.results import load_run

    _, records = load_run(run_dir)
    for r in records:
        s = (r.summary or [{}])[0]
        ms = lambda v: "-" if v is None else f"{v * 1e3:.1f} ms"  # noqa: E731
        print(f"{r.cell_id}: {r.metrics.get('ok', 0)} ok / {r.metrics.get('failed', 0)} failed requests, "
              f"TTFT p50 {ms(s.get('ttft_p50_s'))}, TPOT p50 {ms(s.get('tpot_p50_s'))}")
    print(f"imported {len(records)} cell(s) measured by {records[0].sut.get('measured_by') if records else '?'} "
          f"into {run_dir}")
    return 0
