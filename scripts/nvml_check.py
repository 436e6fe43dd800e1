#!/usr/bin/env python3
"""Check the NVML energy path on a real NVIDIA GPU (run by scripts/gpu_check.sh).

Why: the NVML meter's logic is unit-tested against a fake device; only a real
board shows whether the driver's energy counter exists, how often it really
updates, and whether it agrees with sampled power. This script measures, with
the harness's own NvmlMeter and measure_cell_energy:

1. the counter's observed update period (polled at ~2 kHz for 2 s),
2. idle board power (counter, model-free but CUDA context up, device quiet),
3. a ~5 s bf16 matmul load: energy by the counter, by sampled instantaneous
   power (NVML_FI_DEV_POWER_INSTANT) and by sampled nvmlDeviceGetPowerUsage
   (which on recent boards is a 1 s average and lags the step),
4. one small measure_cell_energy run (matmul bursts standing in for prefill
   and generation) to show the per-cell figures on real hardware.

Prints a table and exits 0 when every check passes, 1 when one fails, 2 when
there is no usable NVIDIA GPU (no driver, no CUDA torch).
"""

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # CUDA indices in NVML's (PCI) order

from harness.energy import EnergySettings, measure_cell_energy  # noqa: E402
from harness.meters.nvml import NvmlMeter, NvmlUnsupported, PynvmlDevice  # noqa: E402


def counter_update_period(dev: PynvmlDevice, seconds: float) -> tuple:
    """Poll the counter fast; (median seconds between changes, number of changes)."""
    changes, last = [], dev.total_energy_mj()
    end = time.time() + seconds
    while time.time() < end:
        v = dev.total_energy_mj()
        if v != last:
            changes.append(time.time())
            last = v
        time.sleep(0.0005)
    diffs = [b - a for a, b in zip(changes, changes[1:])]
    return (statistics.median(diffs) if diffs else None), len(changes)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", type=int, default=0, help="NVML device index")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of the matmul load")
    ap.add_argument("--idle", type=float, default=2.0, help="length of the idle window")
    ap.add_argument("--size", type=int, default=8192, help="square matmul size")
    ap.add_argument("--tolerance", type=float, default=0.15,
                    help="max |sampled - counter| / counter for the instantaneous power field")
    ap.add_argument("--no-cell", action="store_true", help="skip the measure_cell_energy run")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    ap.add_argument("--device", default=None, help="torch device for the load (default cuda:<index>)")
    args = ap.parse_args()

    rows: list = []
    failures: list = []
    out: dict = {"index": args.index}

    def row(what, value, ok=True, note=""):
        rows.append((what, value, "" if ok else "FAIL", note))
        if not ok:
            failures.append(f"{what}: {value} {note}".strip())

    try:
        import pynvml
        dev = PynvmlDevice(args.index)
    except Exception as e:  # noqa: BLE001 - report and stop
        print(f"nvml_check: no usable NVIDIA GPU: {e}")
        return 2
    try:
        import torch
        if args.device is None and not torch.cuda.is_available():
            raise RuntimeError("torch.cuda.is_available() is False")
    except Exception as e:  # noqa: BLE001
        print(f"nvml_check: no CUDA torch for the load: {e}")
        return 2
    device = args.device or f"cuda:{args.index}"
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    name = dev.name()
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else driver
    except Exception:  # noqa: BLE001
        driver = "?"
    out.update(device=name, driver=driver)

    # 1. counter and power sources
    try:
        dev.total_energy_mj()
        has_counter = True
    except NvmlUnsupported:
        has_counter = False
    row("total-energy counter", "supported" if has_counter else "not supported", has_counter,
        "" if has_counter else "(Volta or newer has one)")
    sources = {}
    for src, fn in (("instant-field", dev.power_instant_w), ("power-usage", dev.power_usage_w)):
        try:
            fn()
            sources[src] = True
        except Exception:  # noqa: BLE001
            sources[src] = False
        row(f"power reading {src}", "supported" if sources[src] else "not supported")
    if not has_counter and not any(sources.values()):
        failures.append("no counter and no power reading")
    if has_counter:
        period, n = counter_update_period(dev, 2.0)
        out["counter_update_period_s"] = period
        ok = period is not None and period <= 0.5
        row("counter update period (observed)",
            f"{period:.3f} s ({1 / period:.1f} Hz, {n} updates in 2 s)" if period else f"{n} updates in 2 s", ok)

    # load set-up first, so the idle window has the CUDA context up and the device quiet
    a = torch.randn(args.size, args.size, device=device, dtype=torch.bfloat16)
    b = torch.randn(args.size, args.size, device=device, dtype=torch.bfloat16)
    (a @ b).sum().item()
    sync()
    time.sleep(1.0)

    meters = {"counter": NvmlMeter({"index": args.index, "method": "counter", "name": "counter"})}
    for src, ok in sources.items():
        if ok:
            meters[src] = NvmlMeter({"index": args.index, "method": "sampled", "power_source": src,
                                     "name": src})
    if not has_counter:
        del meters["counter"]
    for m in meters.values():
        m.start()
    try:
        # 2. idle
        for m in meters.values():
            m.begin_window("idle")
        time.sleep(args.idle)
        idle = {k: m.end_window("idle")[0] for k, m in meters.items()}
        ref = "counter" if has_counter else next(iter(meters))
        idle_w = idle[ref].watts
        out["idle_w"] = idle_w
        row(f"idle power ({ref}, {args.idle:g} s)", f"{idle_w:.1f} W" if idle_w else idle[ref].reason,
            idle_w is not None and 5 < idle_w < 2000)

        # 3. load
        for m in meters.values():
            m.begin_window("load")
        t_end = time.time() + args.seconds
        iters = 0
        while time.time() < t_end:
            for _ in range(8):
                a @ b
            iters += 8
            sync()
        load = {k: m.end_window("load")[0] for k, m in meters.items()}
        flops = 2 * args.size ** 3 * iters
        r = load[ref]
        out["load"] = {k: v.to_dict() for k, v in load.items()}
        row(f"load: {ref} energy ({r.duration_s:.1f} s)",
            f"{r.joules:.1f} J ({r.watts:.1f} W avg, {flops / r.duration_s / 1e12:.0f} TFLOP/s)"
            if r.joules is not None else r.reason, r.quality == "ok")
        if r.joules is not None:
            row("load: counter updates in window", f"{r.n_updates} (every {r.update_period_s or 0:.3f} s)",
                r.n_updates >= 10)
            row("load raises power above idle", f"{r.watts:.1f} W vs {idle_w:.1f} W",
                idle_w is not None and r.watts > 1.2 * idle_w)
            for src in ("instant-field", "power-usage"):
                if src not in load or load[src].joules is None:
                    continue
                rel = (load[src].joules - r.joules) / r.joules
                checked = src == "instant-field" or not sources.get("instant-field")
                ok = not checked or abs(rel) <= args.tolerance
                row(f"load: sampled {src} energy", f"{load[src].joules:.1f} J ({100 * rel:+.1f} % vs {ref})", ok,
                    "" if checked else "(1 s average: lag expected, not checked)")
                out[f"rel_diff_{src}"] = rel
            t = r.telemetry
            row("load: SM clock min-max", f"{t.get('sm_clock_mhz_min')}-{t.get('sm_clock_mhz_max')} MHz")
            row("load: temperature max", f"{t.get('temp_c_max')} C")
            row("load: throttle reasons seen", ", ".join(t.get("throttle_reasons") or []) or "none")

        # 4. one cell through the harness procedure
        if not args.no_cell and has_counter:
            def burst(seconds):
                end = time.time() + seconds
                while time.time() < end:
                    a @ b
                    sync()

            res = measure_cell_energy([meters["counter"]], lambda: burst(0.05), lambda: burst(0.15),
                                      prompt_tokens=4096, generated_tokens=256,
                                      settings=EnergySettings(idle_s=1.0, min_window_s=1.0), sequences=8)
            e = res.record.meters[0]  # a harness.records.MeterEnergy
            win = e.windows
            out["cell"] = {k: v for k, v in dataclasses.asdict(e).items() if k != "windows"}
            row("cell: idle W / prefill W / generation W",
                f"{e.idle_w:.1f} / {win['prefill']['avg_w']:.1f} / {win['generation']['avg_w']:.1f}"
                if e.quality == "ok" else f"{e.quality}: {e.reason}", e.quality == "ok")
            if e.quality == "ok":
                row("cell: repeats prefill / generation", f"{win['prefill']['repeats']} / {win['generation']['repeats']}")
                row("cell: J/prompt-token, J/gen-token (net)",
                    f"{e.j_per_prompt_token_net:.4f}, {e.j_per_generated_token_net:.4f}")
                if e.cross_check:
                    row("cell: counter vs sampled (generation)", f"{100 * e.cross_check['rel_diff']:+.1f} %")
    finally:
        for m in meters.values():
            m.stop()
        dev.close()

    width = max(len(w) for w, *_ in rows) + 2
    print(f"NVML check: {name} (NVML index {args.index}, driver {driver})")
    for what, value, flag, note in rows:
        print(f"  {what:<{width}}{value}  {flag} {note}".rstrip())
    print("RESULT:", "PASS" if not failures else "FAIL: " + "; ".join(failures))
    out["failures"] = failures
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=str)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
