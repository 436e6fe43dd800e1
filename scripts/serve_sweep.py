#!/usr/bin/env python
"""Latency-throughput sweep of the server scenario against `harness serve`.

Starts `python -m harness.serve` (a separate process, so the load generator does not
share a GIL with the model) on 127.0.0.1, drives it with Poisson arrivals at each
rate through the openai-http client, prints a table and writes a PNG plot:

    .venv/bin/python scripts/serve_sweep.py --plot sweep.png
    .venv/bin/python scripts/serve_sweep.py --model smollm2-135m --rates 0.5,1,2,4 --plot s.png
    .venv/bin/python scripts/serve_sweep.py --url http://127.0.0.1:8000 --model NAME --plot s.png  # any server

Lengths: fixed (--prompt-len/--output-len, the default: equal prompts can batch) or
--lengths sharegpt_like (clipped to --max-prompt-len/--max-output-len).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.openai_http import OpenAIHttpClient, OpenAIHttpOptions  # noqa: E402
from harness.energy import EnergySettings, SteadyEnergy  # noqa: E402
from harness.scenarios.request_metrics import format_table  # noqa: E402
from harness.scenarios.server import ServerConfig, ServerScenario  # noqa: E402
from harness.schema import build  # noqa: E402


def start_server(args) -> tuple[subprocess.Popen, str]:
    ready = Path(tempfile.mkdtemp(prefix="serve-sweep-")) / "url"
    env = dict(os.environ, OMP_NUM_THREADS=str(args.server_threads), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "harness.serve", "--backend", args.backend, "--model", args.model, "--port", "0",
           "--max-batch", str(args.max_batch), "--max-seq", str(args.max_seq), "--ready-file", str(ready),
           "--option", f"threads={args.server_threads}", "--batch-wait-ms", str(args.batch_wait_ms)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    deadline = time.time() + 300
    while not ready.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise SystemExit(f"harness serve did not start: {' '.join(cmd)}")
        time.sleep(0.2)
    return proc, ready.read_text().strip()


def plot(rows: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    offered = [r["rate"] for r in rows]
    rps = [r["achieved_rps"] or 0 for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    ms = lambda k: [1000 * r[k] if r[k] is not None else float("nan") for r in rows]  # noqa: E731
    a.plot(rps, ms("ttft_p50_s"), "o-", label="TTFT p50")
    a.plot(rps, ms("ttft_p99_s"), "o--", label="TTFT p99")
    a.plot(rps, ms("tpot_p50_s"), "s-", label="TPOT p50")
    for x, y, r in zip(rps, ms("ttft_p99_s"), offered):
        a.annotate(f"{r:g}/s", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    a.set_xlabel("achieved requests/s")
    a.set_ylabel("latency (ms)")
    a.set_yscale("log")
    a.grid(True, alpha=0.3)
    a.legend()
    a.set_title("latency vs throughput")
    b.plot(offered, rps, "o-", label="achieved req/s")
    b.plot(offered, [r["goodput_rps"] or 0 for r in rows], "s--", label="goodput req/s")
    b.plot(offered, offered, ":", color="grey", label="offered")
    b2 = b.twinx()
    b2.plot(offered, [r["output_tps"] or 0 for r in rows], "^-", color="tab:red", label="output tok/s")
    b2.set_ylabel("output tokens/s", color="tab:red")
    b.set_xlabel("offered rate (requests/s, Poisson)")
    b.set_ylabel("requests/s")
    b.grid(True, alpha=0.3)
    b.legend(loc="upper left")
    b.set_title("throughput vs offered load")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plot", required=True, help="PNG to write")
    p.add_argument("--json", help="write the full scenario result here too")
    p.add_argument("--url", help="drive this server instead of starting `harness serve`")
    p.add_argument("--backend", default="torch")
    p.add_argument("--model", default="tiny")
    p.add_argument("--rates", default="2,4,8,16,32", help="comma-separated requests/s")
    p.add_argument("--requests", type=int, default=80, help="requests per rate (at most)")
    p.add_argument("--duration-s", type=float, default=15.0, help="stop issuing after this long per rate")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--lengths", help="a lengths file in workloads/lengths (e.g. sharegpt_like) instead of fixed")
    p.add_argument("--max-prompt-len", type=int, default=128)
    p.add_argument("--max-output-len", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-seq", type=int, default=256)
    p.add_argument("--batch-wait-ms", type=float, default=0.0)
    p.add_argument("--server-threads", type=int, default=1, help="torch threads of the server process")
    p.add_argument("--ttft-limit", type=float, default=0.5, help="goodput limit on TTFT (s)")
    p.add_argument("--tpot-limit", type=float, default=0.05, help="goodput limit on TPOT (s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--meter", action="append", default=[], help='meter config as JSON, e.g. \'{"type": "rapl"}\'')
    args = p.parse_args()

    if args.lengths:
        lengths = {"type": "file", "path": args.lengths, "max_prompt_len": args.max_prompt_len,
                   "max_output_len": args.max_output_len}
    else:
        lengths = {"type": "fixed", "prompt_len": args.prompt_len, "output_len": args.output_len}
    cfg = {"type": "server", "rates": [float(r) for r in args.rates.split(",")], "requests": args.requests,
           "duration_s": args.duration_s, "warmup_requests": 3, "lengths": lengths,
           "limits": {"ttft_s": args.ttft_limit, "tpot_s": args.tpot_limit}, "cooldown_s": 0.5}
    scenario = ServerScenario(build(ServerConfig, cfg, "serve_sweep scenario"))
    proc = None
    url = args.url
    if url is None:
        proc, url = start_server(args)
    meters = []
    try:
        if args.meter:
            from harness.meters import build_meters

            meters = build_meters([json.loads(m) for m in args.meter])
            for m in meters:
                m.start()
        client = OpenAIHttpClient(OpenAIHttpOptions(url=url, model=None if args.url else args.model, timeout_s=120))
        client.check()

        def progress(run):
            print(f"  rate {run.rate:g}/s: {run.metrics['ok']}/{run.n_requests} ok", flush=True)

        # no idle baseline (the server runs in another process): gross figures only
        energy = SteadyEnergy(meters, EnergySettings(idle_s=0)) if meters else None
        runs = scenario.measure(client, seed=args.seed, energy=energy, on_run=progress)
        stats = None
        if proc is not None:
            stats = json.loads(urllib.request.urlopen(url + "/stats", timeout=10).read())
    finally:
        for m in meters:
            m.stop()
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    rows = [r.summary_row() for r in runs]
    lens = (f"prompt {args.prompt_len} / output {args.output_len} tokens" if not args.lengths
            else f"{args.lengths} (clipped {args.max_prompt_len}/{args.max_output_len})")
    title = (f"harness serve --backend {args.backend} --model {args.model} --max-batch {args.max_batch} "
             f"(server threads {args.server_threads}); {lens}; limits TTFT {args.ttft_limit}s TPOT {args.tpot_limit}s")
    print(title)
    print(format_table(rows))
    if stats:
        print(f"server batches: {stats['batches']}, batch sizes {stats['batch_sizes']}")
    for r in rows:
        if r["j_per_output_token"] is not None:
            print(f"rate {r['rate']:g}: {r['j_per_output_token']:.4g} J/output token ({r['energy_meter']}, "
                  f"{r['energy_quality']})")
    plot(rows, args.plot, title)
    print(f"plot: {args.plot}")
    if args.json:
        out = {"scenario": scenario.config_json(None), "runs": [r.to_json() for r in runs], "summary": rows,
               "server_stats": stats}
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
