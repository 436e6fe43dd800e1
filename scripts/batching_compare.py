#!/usr/bin/env python
"""Static against continuous batching in `harness serve`, under the same closed-loop load.

For each policy, starts `python -m harness.serve --batching POLICY` (its own process, so
the load generator does not share a GIL with the model), drives it with the concurrency
scenario through the openai-http client, reads the engine's batch statistics from /stats,
and prints one latency-throughput table and the decode batch-size histograms:

    .venv/bin/python scripts/batching_compare.py                       # tiny, c=4, prompts 32..96 / 32
    .venv/bin/python scripts/batching_compare.py --model smollm2-135m --requests 24
    .venv/bin/python scripts/batching_compare.py --prompt-len 64 64     # equal prompts (static's best case)

Prompt lengths are drawn uniformly from --prompt-len LO HI (a realistic load has varied
prompts); every request generates exactly --output-len tokens.
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

from backends.base import Request  # noqa: E402
from backends.openai_http import OpenAIHttpClient, OpenAIHttpOptions  # noqa: E402
from harness.scenarios.concurrency import ConcurrencyConfig, ConcurrencyScenario  # noqa: E402
from harness.schema import build  # noqa: E402


def start_server(args, policy: str) -> tuple[subprocess.Popen, str]:
    ready = Path(tempfile.mkdtemp(prefix="batching-compare-")) / "url"
    env = dict(os.environ, OMP_NUM_THREADS=str(args.server_threads), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "harness.serve", "--backend", "torch", "--model", args.model, "--port", "0",
           "--max-batch", str(args.max_batch), "--max-seq", str(args.prompt_len[1] + args.output_len),
           "--ready-file", str(ready), "--option", f"threads={args.server_threads}", "--batching", policy]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not ready.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise SystemExit(f"harness serve did not start: {' '.join(cmd)}")
        time.sleep(0.2)
    return proc, ready.read_text().strip()


def run_policy(args, policy: str) -> tuple[dict, dict]:
    lo, hi = args.prompt_len
    cfg = {"type": "concurrency", "concurrency": args.concurrency, "requests": args.requests,
           "warmup_requests": 0, "lengths": {"type": "uniform", "prompt_len": [lo, hi],
                                             "output_len": [args.output_len, args.output_len]}}
    scenario = ConcurrencyScenario(build(ConcurrencyConfig, cfg, "batching_compare scenario"))
    proc, url = start_server(args, policy)
    try:
        client = OpenAIHttpClient(OpenAIHttpOptions(url=url, model=args.model, timeout_s=300))
        client.check()
        for i in range(2):  # warm-ups, one at a time, before the counters are read
            warm = Request(id=-1 - i, prompt_len=lo, max_tokens=args.output_len, prompt_ids=[10 + i] * lo)
            assert client.issue(warm).ok
        before = json.loads(urllib.request.urlopen(url + "/stats", timeout=10).read())["batching"]
        (run,) = scenario.measure(client, seed=args.seed)
        after = json.loads(urllib.request.urlopen(url + "/stats", timeout=10).read())["batching"]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    # the measured requests only: the probe and warm-ups ran before `before`
    hist = {k: v - before["decode_batch_sizes"].get(k, 0) for k, v in after["decode_batch_sizes"].items()}
    hist = {k: v for k, v in hist.items() if v}
    stats = {"decode_batch_sizes": hist, "decode_steps": sum(hist.values()),
             "admitted_mid_batch": after["admitted_mid_batch"] - before["admitted_mid_batch"],
             "prefills": sum(after["prefill_batch_sizes"].values()) - sum(before["prefill_batch_sizes"].values())}
    return run.summary_row() | {"ok": run.metrics["ok"]}, stats


def ms(v) -> str:
    return "-" if v is None else f"{1000 * v:.1f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--requests", type=int, default=48)
    p.add_argument("--prompt-len", type=int, nargs=2, default=[32, 96], metavar=("LO", "HI"))
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--server-threads", type=int, default=1, help="torch threads of the server process")
    p.add_argument("--policies", default="static,continuous")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the rows and histograms here too")
    args = p.parse_args()

    results = {}
    for policy in args.policies.split(","):
        print(f"{policy}: running {args.requests} requests ...", flush=True)
        results[policy] = run_policy(args, policy)
    print(f"\nharness serve --model {args.model} --max-batch {args.max_batch}, torch cpu threads "
          f"{args.server_threads}; concurrency {args.concurrency}, {args.requests} requests, prompts "
          f"{args.prompt_len[0]}..{args.prompt_len[1]} tokens, {args.output_len} out\n")
    print("| batching | ok | req/s | output tok/s | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | TPOT p99 ms "
          "| mean decode batch | admitted mid-batch |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for policy, (row, st) in results.items():
        h = {int(k): v for k, v in st["decode_batch_sizes"].items()}
        mean = sum(b * n for b, n in h.items()) / max(1, sum(h.values()))
        print(f"| {policy} | {row['ok']}/{row['requests']} | {row['achieved_rps']:.2f} | {row['output_tps']:.1f} "
              f"| {ms(row['ttft_p50_s'])} | {ms(row['ttft_p99_s'])} | {ms(row['tpot_p50_s'])} "
              f"| {ms(row['tpot_p99_s'])} | {mean:.2f} | {st['admitted_mid_batch']} |")
    sizes = sorted({int(k) for _, st in results.values() for k in st["decode_batch_sizes"]})
    print("\ndecode steps by batch size (sequences advanced per step):\n")
    print("| batching | " + " | ".join(str(b) for b in sizes) + " | steps |")
    print("|---" * (len(sizes) + 2) + "|")
    for policy, (_, st) in results.items():
        h, n = st["decode_batch_sizes"], st["decode_steps"]
        cells = [f"{h.get(str(b), 0)} ({100 * h.get(str(b), 0) / max(1, n):.0f} %)" for b in sizes]
        print(f"| {policy} | " + " | ".join(cells) + f" | {n} |")
    if args.json:
        Path(args.json).write_text(json.dumps({p: {"summary": r, "batching": s} for p, (r, s) in results.items()},
                                              indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
