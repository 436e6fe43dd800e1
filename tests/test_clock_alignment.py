"""Clock alignment of external meter logs by the harness's power signature.

The "meter" is a real log written in real time (tests/power_logs.py) whose watts follow
the host's load as the harness schedules it (high while the signature's burst or the
cell's work runs, on the host clock), stamped by a clock the test skews. That exercises
the detection for real; this machine's CPU draws no power change a test could log.
"""

import dataclasses
import os
import resource
import time

import pytest

from harness.energy import EnergySettings, measure_cell_energy
from harness.meters import ClockSignature, CsvLogMeter, MeterError, PtdaemonLogMeter, align_clocks
from harness.meters.clock import SignatureRun, cpu_burst, locate

from .power_logs import PowerLog, PowerSchedule

PROMPT_TOKENS, GEN_TOKENS, SEQS = 64, 256, 4
SIG = ClockSignature(idle_s=2.6, load_s=2.0, max_offset_s=2.4)
LOW, HIGH = 60.0, 260.0


def test_skewed_logs_are_aligned_with_auto_and_flagged_without(tmp_path):
    """One signature, four logs: +2 s and -2 s skew, each with clock_offset_s auto and 0."""
    power = PowerSchedule(LOW, HIGH)
    cases = {"ahead-auto": (2.0, "auto"), "behind-auto": (-2.0, "auto"),
             "ahead-0": (2.0, 0), "behind-0": (-2.0, 0)}
    writers = {n: PowerLog(tmp_path / f"{n}.csv", power, period_s=0.02, skew_s=skew) for n, (skew, _) in cases.items()}
    for w in writers.values():
        w.start()
    time.sleep(SIG.max_offset_s + 0.5)   # the -2 s log must reach back before the signature
    meters = [CsvLogMeter({"path": str(tmp_path / f"{n}.csv"), "name": n, "clock_offset_s": off})
              for n, (_, off) in cases.items()]

    def work():
        power.on()
        time.sleep(0.2)
        power.off()

    try:
        for m in meters:
            m.start()
        found = {a.meter: a for a in align_clocks(meters, SIG, load=power.load)}
        res = measure_cell_energy(meters, work, work, PROMPT_TOKENS, GEN_TOKENS,
                                  EnergySettings(idle_s=0.5, min_window_s=1.5, min_updates=5), sequences=SEQS)
    finally:
        for m in meters:
            m.stop()
        for w in writers.values():
            w.stop()

    report = {}
    for name, (skew, off) in cases.items():
        a, e = found[name], next(e for e in res.record.meters if e.meter == name)
        assert a.found and a.offset_s == pytest.approx(skew, abs=0.02), (name, a)
        assert a.resolution_s == pytest.approx(0.02, rel=0.25)
        errors = {}
        for phase, w in e.windows.items():
            truth = power.energy(w["t_start"], w["t_end"])
            errors[phase] = (truth, w["gross_j"])
        if off == "auto":
            assert a.applied and a.problem is None and a.residual_s is None
            assert e.quality == "ok", e.reason
            for phase, (truth, got) in errors.items():
                assert got == pytest.approx(truth, rel=0.02), (name, phase)
            assert e.windows["generation"]["telemetry"]["clock_offset_s"] == pytest.approx(skew, abs=0.02)
        else:
            assert not a.applied and a.residual_s == pytest.approx(skew, abs=0.02)
            assert e.quality == "clock-skew" and "clock_offset_s: auto" in e.reason
            assert ("s ahead of this host" if skew > 0 else "s behind this host") in e.reason
            # what the flag protects against: the uncorrected figures are far off
            truth, got = errors["prefill"]
            assert abs(got / truth - 1) > 0.1, name
        report[name] = {"offset_s": round(a.offset_s, 4), **{p: f"{got / truth - 1:+.2%}" for p, (truth, got) in errors.items()}}
    print(report)


def test_auto_without_a_signature_found_or_run_is_flagged(tmp_path):
    flat = tmp_path / "flat.csv"
    writer = PowerLog(flat, 100.0, period_s=0.02)
    writer.start()
    sig = ClockSignature(idle_s=0.8, load_s=0.6, max_offset_s=0.5)
    try:
        time.sleep(1.0)
        never = CsvLogMeter({"path": str(flat), "name": "never", "clock_offset_s": "auto"})
        m = CsvLogMeter({"path": str(flat), "name": "flat", "clock_offset_s": "auto"})
        fixed = CsvLogMeter({"path": str(flat), "name": "fixed", "clock_offset_s": 0.25})
        (a, b) = align_clocks([m, fixed], sig, load=time.sleep)   # the log never sees the load
        for meter in (never, m, fixed):
            meter.begin_window("w")
        time.sleep(0.3)
        end = time.time()
        readings = {meter.name: meter.end_window("w", end)[0] for meter in (never, m, fixed)}
    finally:
        writer.stop()
    assert not a.found and a.problem.startswith("clock_offset_s: auto, but the clock signature was not found")
    assert readings["flat"].quality == "clock-skew" and readings["flat"].reason == a.problem
    # a configured offset stays in charge when nothing is known against it
    assert not b.found and b.problem is None and b.reason
    assert readings["fixed"].quality == "ok"
    assert readings["never"].quality == "clock-skew" and "no clock alignment was run" in readings["never"].reason


def test_no_external_meter_runs_no_signature():
    t = time.time()
    assert align_clocks([], SIG) == []
    assert time.time() - t < 1.0


def test_locate_point_samples_with_noise_and_following_convention():
    """A log that samples power at instants (a cheap meter), 0.5 s apart, with noise,
    1.3 s behind: found within its resolution."""
    import numpy as np

    rng = np.random.default_rng(0)
    run = SignatureRun(t_start=1000.0, t_load_on=1005.0, t_load_off=1010.0, t_end=1015.0)
    t_host = np.arange(990.0, 1025.0, 0.5)
    watts = np.where((t_host >= run.t_load_on) & (t_host < run.t_load_off), 180.0, 110.0)
    watts = watts + rng.normal(0, 3.0, len(t_host))
    est = locate(t_host - 1.3, watts, run, "following", 0.5, 4.0)
    assert est is not None and not est.at_edge
    assert est.offset_s == pytest.approx(-1.3, abs=0.5) and est.step_w == pytest.approx(70, rel=0.1)
    assert est.contrast > 10


def test_cpu_burst_loads_every_core():
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.time()
    cpu_burst(0.5)
    wall = time.time() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    # shared CI cores: ask for half of what every core flat out would burn
    assert cpu >= 0.5 * 0.5 * (os.cpu_count() or 1) * 0.5
    assert 0.45 <= wall < 5.0


def test_clock_options_are_checked():
    with pytest.raises(MeterError, match="clock_offset_s.*'auto'"):
        CsvLogMeter({"path": "x.csv", "clock_offset_s": "later"})
    assert PtdaemonLogMeter({"path": "x.txt", "clock_offset_s": 2}).options.clock_offset_s == 2.0
    with pytest.raises(MeterError, match="max_offset_s .* must be below idle_s"):
        ClockSignature(idle_s=2.0, max_offset_s=3.0)
    assert dataclasses.asdict(ClockSignature())["load_s"] == 5.0
