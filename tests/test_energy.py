"""The energy window engine: idle baseline, prefill/generation windows, lengthening,
decode split, failures that must not raise, timeline phases; the steady window of the
request scenarios and its record, the same shape as a batch cell's."""

import json
import os
import threading
import time

import pytest

from harness.energy import EnergySettings, SteadyEnergy, measure_cell_energy
from harness.meters import CsvLogMeter, EstimateMeter, Meter, NvmlMeter, RaplMeter
from harness.meters.base import EnergyReading
from tests.test_meters_nvml import FakeGpu

IDLE_W, PREFILL_W, DECODE_W = 70.0, 300.0, 200.0
PROMPT_TOKENS, GEN_TOKENS, SEQS = 4 * 128, 4 * 16, 4


class Workload:
    """Drives the fake board's power and records how long each level lasted."""

    def __init__(self, gpu, prefill_s=0.02, decode_s=0.05):
        self.gpu, self.prefill_s, self.decode_s = gpu, prefill_s, decode_s
        self.hi = {"prefill": [], "decode": []}
        self.calls = {"prefill": 0, "generation": 0}

    def _level(self, watts, seconds, kind):
        t = time.time()
        self.gpu.set_watts(watts)
        time.sleep(seconds)
        self.gpu.set_watts(IDLE_W)
        self.hi[kind].append(time.time() - t)

    def prefill(self):
        self.calls["prefill"] += 1
        self._level(PREFILL_W, self.prefill_s, "prefill")

    def generation(self):
        self.calls["generation"] += 1
        self._level(PREFILL_W, self.prefill_s, "prefill")
        self._level(DECODE_W, self.decode_s, "decode")


def nvml(gpu, **kw):
    """A started meter that has already seen its counter update a few times, so the
    first window is planned from the observed period, not NVML's nominal 0.1 s."""
    m = NvmlMeter({"period_s": 0.005, **kw}, device=gpu)
    m.start()
    time.sleep(0.05)
    return m


FAST = EnergySettings(idle_s=0.15, min_window_s=0.2, min_updates=10)


def entry(result, name):
    return next(m for m in result.record.meters if m.meter == name)


def per_rep(e, phase, kind="gross"):
    """J per repetition of a work window."""
    w = e.windows[phase]
    return w[f"{kind}_j"] / w["repeats"]


def test_full_procedure_with_counter_meter():
    gpu = FakeGpu(watts=IDLE_W, counter_period=0.001)
    m = nvml(gpu)
    wl = Workload(gpu)
    try:
        res = measure_cell_energy([m], wl.prefill, wl.generation, PROMPT_TOKENS, GEN_TOKENS, FAST,
                                  sequences=SEQS)
    finally:
        m.stop()
    e = entry(res, "nvml:0")
    w = res.record.windows
    assert res.record.window == "phases" and res.record.status == "ok"
    assert list(w) == ["idle-before", "prefill", "generation", "idle-after"]
    # lengthened: the window repeats the work until it reaches 0.2 s. How many repeats that takes
    # depends on how long each call took on this (possibly loaded) machine, so it is derived from
    # the calls' measured lengths, never pinned: more than one whenever the first call was shorter.
    n_pf, n_gen = w["prefill"]["repeats"], w["generation"]["repeats"]
    assert n_pf == e.windows["prefill"]["repeats"] == wl.calls["prefill"]
    assert n_gen == e.windows["generation"]["repeats"] == wl.calls["generation"]
    first_gen = wl.hi["prefill"][n_pf] + wl.hi["decode"][0]
    assert n_pf >= 2 or wl.hi["prefill"][0] >= 0.2
    assert n_gen >= 2 or first_gen >= 0.2
    assert w["prefill"]["duration_s"] >= 0.2 and w["generation"]["duration_s"] >= 0.2
    assert w["idle-before"]["duration_s"] >= 0.15
    # provenance
    assert (e.method, e.scope, e.quality) == ("counter", "gpu-board", "ok")
    assert 0.001 <= e.update_period_s < 0.2       # counter 1 ms, seen through a 5 ms poll
    assert e.windows["prefill"]["n_updates"] >= 10
    # baseline
    assert e.idle_w == pytest.approx(IDLE_W, rel=0.02)
    assert e.idle_w_before == pytest.approx(IDLE_W, rel=0.02)
    # the arithmetic, against what the workload actually did
    n_pf, n_gen = e.windows["prefill"]["repeats"], e.windows["generation"]["repeats"]
    pf_hi = sum(wl.hi["prefill"][:n_pf]) / n_pf
    gen_pf_hi = sum(wl.hi["prefill"][n_pf:]) / n_gen
    dec_hi = sum(wl.hi["decode"]) / n_gen
    exp_pf_net = (PREFILL_W - IDLE_W) * pf_hi
    exp_dec_net = (PREFILL_W - IDLE_W) * (gen_pf_hi - pf_hi) + (DECODE_W - IDLE_W) * dec_hi
    decode_net = per_rep(e, "generation", "net") - per_rep(e, "prefill", "net")
    decode_gross = per_rep(e, "generation") - per_rep(e, "prefill")
    assert per_rep(e, "prefill", "net") == pytest.approx(exp_pf_net, rel=0.1)
    assert decode_net == pytest.approx(exp_dec_net, rel=0.1)
    pf = e.windows["prefill"]
    # idle W from the idle windows' own joules and lengths, not the record's idle_w (the figure under test)
    idle_w = sum(e.windows[k]["gross_j"] / e.windows[k]["duration_s"] for k in ("idle-before", "idle-after")) / 2
    assert pf["net_j"] == pytest.approx(pf["gross_j"] - idle_w * pf["duration_s"])
    assert e.j_per_generated_token_gross == pytest.approx(decode_gross / (GEN_TOKENS - SEQS))
    assert e.j_per_prompt_token_net == pytest.approx(per_rep(e, "prefill", "net") / PROMPT_TOKENS)
    assert e.j_per_generated_token_net == pytest.approx(decode_net / (GEN_TOKENS - SEQS))
    assert e.j_per_generated_token_e2e_gross == pytest.approx(per_rep(e, "generation") / GEN_TOKENS)
    assert e.tokens_per_joule_gross == pytest.approx(GEN_TOKENS / per_rep(e, "generation"))
    assert e.energy_per_request_gross_j == pytest.approx(per_rep(e, "generation") / SEQS)
    gen = e.windows["generation"]
    assert e.avg_w == pytest.approx(gen["gross_j"] / gen["duration_s"])
    # counter vs sampled, recorded
    (chk,) = [m.cross_check for m in res.record.meters if m.cross_check]
    assert chk["meter"] == "nvml:0" and chk["agree"] and e.cross_check == chk
    # timeline, phase-labelled
    phases = {r["phase"] for r in res.timeline}
    assert {"idle-before", "prefill", "generation", "idle-after"} <= phases
    ts = [r["t"] for r in res.timeline]
    assert ts == sorted(ts) and all(r["meter"] == "nvml:0" for r in res.timeline)
    assert any("decode energy = generation" in n for n in res.record.notes)
    assert res.record.tokens == {"prompt_tokens": PROMPT_TOKENS, "generated_tokens": GEN_TOKENS,
                                 "decode_tokens": GEN_TOKENS - SEQS, "sequences": SEQS}
    json.dumps(res.record.to_json(), allow_nan=False)      # results.jsonl must be able to carry it as is
    json.dumps(res.timeline, allow_nan=False)


class RaplWriter:
    """Plays the kernel: a fake powercap tree whose package counter rises at `watts`."""

    def __init__(self, root, watts):
        self.dir = root / "intel-rapl:0"
        self.dir.mkdir(parents=True)
        (self.dir / "name").write_text("package-0\n")
        (self.dir / "max_energy_range_uj").write_text("262143328850\n")
        self.watts, self.t0 = watts, time.time()
        self._write()
        self.stop = threading.Event()
        self.th = threading.Thread(target=self._loop, daemon=True)
        self.th.start()

    def _write(self):
        tmp = self.dir / ".e"
        tmp.write_text(f"{int(self.watts * (time.time() - self.t0) * 1e6)}\n")
        os.replace(tmp, self.dir / "energy_uj")

    def _loop(self):
        while not self.stop.wait(0.002):
            self._write()


def test_files_on_disk_rapl_and_wall_log_and_estimate(tmp_path):
    rapl = RaplWriter(tmp_path / "powercap", watts=50.0)
    log = tmp_path / "wall.csv"
    t = time.time() - 5
    # the wall meter's log, written ahead for the next 60 s at 20 Hz: constant 500 W
    log.write_text("timestamp,watts\n" + "".join(f"{t + k * 0.05:.3f},500\n" for k in range(1300)))
    meters = [RaplMeter({"root": str(tmp_path / "powercap"), "period_s": 0.01}),
              CsvLogMeter({"path": str(log), "settle_s": 0, "period_s": 0.05}),
              EstimateMeter({"watts": 350, "source": "TDP"})]
    gpu = FakeGpu()
    wl = Workload(gpu)
    s = EnergySettings(idle_s=0.2, min_window_s=0.2, min_updates=3)
    try:
        res = measure_cell_energy(meters, wl.prefill, wl.generation, PROMPT_TOKENS, GEN_TOKENS, s, sequences=SEQS)
    finally:
        for m in meters:
            m.stop()
        rapl.stop.set()
    r, wall, est = entry(res, "rapl:package-0"), entry(res, "csv-log:wall.csv"), entry(res, "estimate")
    assert (r.scope, r.method, r.quality) == ("cpu-package", "counter", "ok")
    # the writer thread plays the kernel and lags under CPU load: loose here; the RAPL
    # arithmetic itself is checked exactly in test_meters_rapl
    assert r.idle_w == pytest.approx(50.0, rel=0.5)
    assert r.windows["prefill"]["avg_w"] == pytest.approx(50.0, rel=0.5)
    assert (wall.scope, wall.method, wall.quality) == ("wall", "external", "ok"), wall.reason
    assert wall.windows["prefill"]["gross_j"] == pytest.approx(500 * wall.windows["prefill"]["duration_s"], rel=1e-3)
    assert wall.idle_w == pytest.approx(500, rel=1e-3) and abs(wall.windows["generation"]["net_j"]) < 0.5
    assert wall.update_period_s == pytest.approx(0.05, rel=0.01)
    # an estimate stays labelled as one
    assert (est.method, est.quality) == ("estimate", "estimate")
    assert "not a measurement" in est.reason and "TDP" in est.reason
    assert est.windows["generation"]["gross_j"] == pytest.approx(350 * est.windows["generation"]["duration_s"])
    assert {row["meter"] for row in res.timeline} >= {"rapl:package-0", "csv-log:wall.csv"}


def test_no_lengthening_flags_short_windows():
    gpu = FakeGpu(watts=IDLE_W, counter_period=0.05)   # 20 Hz counter: 10 updates need 0.5 s
    m = nvml(gpu)
    wl = Workload(gpu)
    s = EnergySettings(idle_s=0.1, min_window_s=0.2, min_updates=10, lengthen=False)
    try:
        res = measure_cell_energy([m], wl.prefill, wl.generation, PROMPT_TOKENS, GEN_TOKENS, s)
    finally:
        m.stop()
    e = entry(res, "nvml:0")
    assert e.windows["prefill"]["repeats"] == 1 and e.windows["generation"]["repeats"] == 1
    assert e.quality == "short-window"
    assert "min_updates 10" in e.windows["prefill"]["reason"] and "min_window_s" in e.reason
    assert e.windows["prefill"]["gross_j"] is not None        # reported, but flagged
    assert any(w.startswith("idle-before short-window") for w in e.warnings)
    assert any("not lengthened" in n for n in res.record.notes)


def test_lengthening_is_bounded_for_a_meter_that_never_updates():
    gpu = FakeGpu(watts=IDLE_W)
    gpu.frozen_mj = 5
    m = nvml(gpu, stall_s=100.0)
    wl = Workload(gpu, prefill_s=0.005, decode_s=0.005)
    s = EnergySettings(idle_s=0, min_window_s=0.05, min_updates=10, max_repeats=7)
    try:
        res = measure_cell_energy([m], wl.prefill, wl.generation, PROMPT_TOKENS, GEN_TOKENS, s)
    finally:
        m.stop()
    e = entry(res, "nvml:0")
    assert e.windows["prefill"]["repeats"] == 7 and e.quality == "short-window"
    assert e.idle_w is None and e.windows["prefill"]["net_j"] is None
    assert list(res.record.windows) == ["prefill", "generation"]
    assert any("idle windows disabled" in n for n in res.record.notes)


class ExplodingMeter(Meter):
    """A meter whose end_window raises during the generation window."""

    type = "exploding"

    class Options:
        pass

    def __init__(self):
        self.options, self.name, self.method, self.scope = None, "boom", "counter", "npu-module"
        self.available, self.reason, self.started, self._open, self._sampler = True, None, True, {}, None

    def end_window(self, name, at=None):
        t0, t1 = self._close_window(name, at)
        if name == "generation":
            raise RuntimeError("driver went away")
        return [EnergyReading(self.name, "counter", "npu-module", 1.0, t1 - t0, 50, 0.001, "ok",
                              t_start=t0, t_end=t1)]

    def expected_period_s(self):
        return 0.001


def test_meter_failures_do_not_raise():
    gpu = FakeGpu(watts=IDLE_W, counter_period=0.001)
    m = nvml(gpu)
    wl = Workload(gpu)

    def generation_that_loses_the_gpu():
        wl.generation()
        gpu.broken = True

    try:
        res = measure_cell_energy([m, ExplodingMeter(), EstimateMeter({"watts": 10})], wl.prefill,
                                  generation_that_loses_the_gpu, PROMPT_TOKENS, GEN_TOKENS, FAST)
    finally:
        m.stop()
    g, boom, est = entry(res, "nvml:0"), entry(res, "boom"), entry(res, "estimate")
    assert g.quality == "unavailable" and "GPU is lost" in g.reason
    assert g.windows["prefill"]["gross_j"] is not None and g.windows["generation"]["gross_j"] is None
    assert g.j_per_prompt_token_gross is not None and g.j_per_generated_token_gross is None
    assert boom.quality == "unavailable" and "driver went away" in boom.reason
    assert boom.windows["prefill"]["gross_j"] == 1.0
    assert est.windows["generation"]["gross_j"] is not None


def test_workload_error_closes_windows_and_propagates():
    gpu = FakeGpu(watts=IDLE_W)
    m = nvml(gpu)

    def bad():
        raise ValueError("backend crashed")

    try:
        with pytest.raises(ValueError, match="backend crashed"):
            measure_cell_energy([m], bad, bad, 1, 1, EnergySettings(idle_s=0.01))
        assert m._open == {}
        m.begin_window("again")        # the meter is still usable
        assert m.end_window("again")[0].joules is not None
    finally:
        m.stop()


def test_no_meter_available_runs_no_work(tmp_path):
    calls = []
    res = measure_cell_energy([], lambda: calls.append(1), lambda: calls.append(2), 1, 1)
    assert res.record.meters == [] and not calls and res.record.status == "no meters"
    rapl = RaplMeter({"root": str(tmp_path / "none")})
    res = measure_cell_energy([rapl], lambda: calls.append(1), lambda: calls.append(2), 1, 1)
    assert not calls
    (e,) = res.record.meters
    assert e.quality == "unavailable" and "powercap" in e.reason
    assert res.timeline == [] and res.record.windows == {}


# --- the steady window of the request scenarios ---------------------------------------------

class KnownMeter(Meter):
    """Hands back known joules for each window, whatever its real length: the figures
    can then be checked against arithmetic done by hand. Counts window calls."""

    type = "known"

    class Options:
        pass

    def __init__(self, readings, n_updates=50):
        self.options, self.name, self.method, self.scope = None, "known", "counter", "npu-module"
        self.available, self.reason, self.started, self._open, self._sampler = True, None, True, {}, None
        self.readings, self.n_updates = readings, n_updates   # window -> (joules, seconds)
        self.calls = {"begin": 0, "end": 0}

    def begin_window(self, name, at=None):
        self.calls["begin"] += 1
        super().begin_window(name, at)

    def end_window(self, name, at=None):
        self.calls["end"] += 1
        t0, t1 = self._close_window(name, at)
        joules, seconds = self.readings[name]
        return [EnergyReading(self.name, "counter", "npu-module", joules, seconds, self.n_updates, 0.01, "ok",
                              t_start=t0, t_end=t1)]


KNOWN = {"idle-before": (100.0, 2.0), "prefill": (60.0, 1.0), "generation": (400.0, 2.0),
         "idle-after": (60.0, 1.0), "steady": (300.0, 2.0)}
QUICK = EnergySettings(idle_s=0.01, min_window_s=0.5, min_updates=10, lengthen=False)


def steady_record(meter, settings=QUICK, tokens=120.0, done=6):
    energy = SteadyEnergy([meter], settings)
    energy.measure_idle()
    w = energy.window()
    w.begin()
    w.end()
    return energy.measure(w, tokens, done)


def test_steady_window_figures_from_known_readings():
    res = steady_record(KnownMeter(KNOWN))
    rec = res.record
    assert (rec.window, rec.status) == ("steady", "ok") and list(rec.windows) == ["idle-before", "steady"]
    assert rec.tokens == {"output_tokens": 120.0, "requests_completed": 6}
    (e,) = rec.meters
    idle_w = 100.0 / 2.0
    gross, net = 300.0, 300.0 - idle_w * 2.0
    assert (e.quality, e.reason, e.warnings) == ("ok", None, [])  # no "idle after unavailable": none is taken
    assert (e.idle_w, e.idle_w_before, e.idle_w_after, e.avg_w) == (idle_w, idle_w, None, 150.0)
    assert e.j_per_generated_token_gross == gross / 120 and e.j_per_generated_token_net == net / 120
    assert e.tokens_per_joule_gross == 120 / gross and e.tokens_per_joule_net == 120 / net
    assert e.energy_per_request_gross_j == gross / 6 and e.energy_per_request_net_j == net / 6
    assert e.j_per_prompt_token_gross is None and e.j_per_generated_token_e2e_gross is None
    assert (e.windows["steady"]["gross_j"], e.windows["steady"]["net_j"]) == (gross, net)
    json.dumps(rec.to_json(), allow_nan=False)


def test_steady_and_batch_records_have_one_shape():
    batch = measure_cell_energy([KnownMeter(KNOWN)], lambda: None, lambda: None, 40, 24, QUICK,
                                sequences=4).record
    steady = steady_record(KnownMeter(KNOWN)).record
    b, s = batch.meters[0], steady.meters[0]
    assert type(b) is type(s)
    # the figures a table reads are filled in both
    for name in ("avg_w", "idle_w", "j_per_generated_token_gross", "j_per_generated_token_net",
                 "tokens_per_joule_gross", "tokens_per_joule_net", "energy_per_request_gross_j",
                 "energy_per_request_net_j"):
        assert getattr(b, name) is not None and getattr(s, name) is not None, name
    assert set(s.windows["steady"]) == set(b.windows["generation"])
    # batch, by hand: idle_w = mean of the two idle rates; decode = generation - prefill per repetition
    idle_w = (100.0 / 2.0 + 60.0 / 1.0) / 2
    gen_net, pf_net = 400.0 - idle_w * 2.0, 60.0 - idle_w * 1.0
    assert b.idle_w == idle_w and b.avg_w == 200.0
    assert b.j_per_generated_token_gross == (400.0 - 60.0) / (24 - 4)
    assert b.j_per_generated_token_net == pytest.approx((gen_net - pf_net) / (24 - 4))
    assert b.j_per_prompt_token_net == pytest.approx(pf_net / 40)
    assert b.tokens_per_joule_gross == 24 / 400.0 and b.energy_per_request_gross_j == 400.0 / 4


def test_steady_window_is_judged_not_lengthened():
    res = steady_record(KnownMeter(KNOWN, n_updates=3))
    (e,) = res.record.meters
    assert e.quality == "short-window" and e.reason == "3 meter updates < min_updates 10"
    assert e.j_per_generated_token_gross == 300.0 / 120  # flagged, still reported
    assert any(w.startswith("idle-before short-window") for w in e.warnings)


def test_steady_window_opens_and_closes_once_from_many_threads():
    meter = KnownMeter(KNOWN)
    energy = SteadyEnergy([meter], EnergySettings(idle_s=0))
    w = energy.window()
    w.end()  # never begun: nothing to close
    threads = [threading.Thread(target=f) for _ in range(8) for f in (w.begin, w.end)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.end()
    assert w.closed and meter.calls == {"begin": 1, "end": 1}
    (e,) = energy.measure(w, 10.0, 1).record.meters
    assert e.idle_w is None and e.j_per_generated_token_net is None and e.j_per_generated_token_gross == 30.0


def test_steady_window_that_never_came_up():
    energy = SteadyEnergy([KnownMeter(KNOWN)], QUICK)
    w = energy.window()
    res = energy.measure(w, 0.0, 0, no_window="no request completed before the last arrival: no steady state")
    assert res.record.status == "no steady window" and "no request completed" in res.record.reason
    assert res.record.meters == [] and res.timeline == []


def test_steady_energy_of_an_estimate_meter():
    est = EstimateMeter({"watts": 50.0, "scope": "cpu-package"})
    est.start()
    res = steady_record(est, EnergySettings(idle_s=0.05, min_window_s=0.5, min_updates=10))
    (e,) = res.record.meters
    assert (e.method, e.quality) == ("estimate", "estimate") and "not a measurement" in e.reason
    steady = e.windows["steady"]
    assert steady["gross_j"] == pytest.approx(50.0 * steady["duration_s"])
    assert e.j_per_generated_token_gross == pytest.approx(steady["gross_j"] / 120)
    assert e.idle_w == pytest.approx(50.0) and e.warnings == []
