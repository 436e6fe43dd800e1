"""Scenarios as plugins: the registry, each scenario's own keys, the points a suite cell
expands into, and run(ctx) on a real model backend the way the worker calls it."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest

from harness.energy import EnergySettings
from harness.records import PlannedCell
from harness.registry import RegistryError, load_scenario_class, scenario_entry_points
from harness.scenarios.base import CellContext, Scenario, ScenarioPoint
from harness.scenarios.offline import prompt_tokens
from harness.schema import ConfigError, build

ROOT = Path(__file__).resolve().parent.parent
BUILT_IN = {"offline": "OfflineScenario", "single-stream": "SingleStreamScenario",
            "concurrency": "ConcurrencyScenario", "server": "ServerScenario"}


def scenario(mapping: dict) -> Scenario:
    cls = load_scenario_class(mapping["type"])
    return cls(build(cls.Config, mapping, "scenario"))


def problems(mapping: dict) -> str:
    with pytest.raises(ConfigError) as e:
        scenario(mapping)
    return str(e.value)


# --- the registry -------------------------------------------------------------------------------

def test_every_built_in_scenario_resolves():
    assert set(BUILT_IN) <= set(scenario_entry_points())
    for name, cls_name in BUILT_IN.items():
        cls = load_scenario_class(name)
        assert issubclass(cls, Scenario) and cls.__name__ == cls_name and cls.name == name
        assert dataclasses.is_dataclass(cls.Config) and "type" in {f.name for f in dataclasses.fields(cls.Config)}
    assert load_scenario_class("offline").backend_kinds == ("model",)
    assert all(load_scenario_class(n).backend_kinds == ("model", "request") for n in BUILT_IN if n != "offline")


def test_unknown_scenario_is_an_error():
    with pytest.raises(RegistryError, match="unknown scenario 'burst'.*registered:.*single-stream"):
        load_scenario_class("burst")


def test_the_measurement_path_never_imports_the_http_server():
    code = ("import sys, harness.energy, harness.worker, harness.scenarios.engine, harness.scenarios.offline, "
            "harness.scenarios.single_stream, harness.scenarios.concurrency, harness.scenarios.server; "
            "sys.exit('harness.serve' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


# --- each scenario's own keys ---------------------------------------------------------------------

def test_offline_takes_no_request_keys():
    msg = problems({"type": "offline", "requests": 64})
    assert "requests: unknown key" in msg
    assert scenario({"type": "offline"}).points() == [ScenarioPoint("offline")]


def test_offline_refusal_names_the_suite_line(write_suite):
    from harness.config import load_plan

    path = write_suite("name: t\nbackends:\n  - type: torch\nworkloads:\n  - model: tiny\n"
                       "scenario:\n  type: offline\n  requests: 64\n")
    with pytest.raises(ConfigError) as e:
        load_plan(path)
    assert f"{path}:8: scenario.requests: unknown key" in str(e.value)


def test_a_key_of_another_scenario_is_unknown():
    assert "rates: unknown key" in problems({"type": "single-stream", "rates": [1]})
    assert "concurrency: unknown key" in problems({"type": "server", "rates": [1], "concurrency": 2})
    assert "duration_s: unknown key" in problems({"type": "concurrency", "duration_s": 3})


def test_request_scenario_checks():
    msg = problems({"type": "server", "rates": [2, -1, float("inf")], "requests": 0, "token_range": [5, 5],
                    "limits": {"ttft_s": 0}, "lengths": {"type": "uniform", "prompt_len": [8, 4], "output_len": [1, 2]},
                    "duration_s": 0, "cooldown_s": -1})
    for text in ("rates[1]: expected a rate > 0", "rates[2]: expected a finite number", "requests: expected at least 1",
                 "token_range: expected [lo, hi]", "limits.ttft_s: expected a limit > 0",
                 "lengths: uniform lengths: prompt_len must be [lo, hi]", "duration_s: expected > 0",
                 "cooldown_s: expected >= 0"):
        assert text in msg, text
    assert "needs a list of rates" in problems({"type": "server"})
    assert "concurrency: expected at least 1" in problems({"type": "concurrency", "concurrency": 0})


def test_server_points_one_per_rate():
    sc = scenario({"type": "server", "rates": [1, 2.5, 40]})
    assert sc.points() == [ScenarioPoint("server@1", 1.0), ScenarioPoint("server@2.5", 2.5),
                           ScenarioPoint("server@40", 40.0)]
    assert all(isinstance(p.rate, float) for p in sc.points())
    assert scenario({"type": "concurrency"}).points() == [ScenarioPoint("concurrency")]


def test_max_seq_from_the_scenario_lengths_or_the_cell():
    assert scenario({"type": "offline"}).max_seq(64, 32) == 96
    assert scenario({"type": "single-stream"}).max_seq(64, 32) == 96
    uniform = {"type": "uniform", "prompt_len": [4, 20], "output_len": [2, 9]}
    assert scenario({"type": "concurrency", "lengths": uniform}).max_seq(64, 32) == 29


def test_server_passes_at_one_rate_or_all():
    sc = scenario({"type": "server", "rates": [5, 10], "requests": 40, "duration_s": 1.0})
    reqs = list(range(40))
    one = sc.passes(reqs, seed=3, batch=4, rate=10.0)
    assert [p.rate for p in one] == [10.0] and [p.rate for p in sc.passes(reqs, seed=3, batch=4, rate=None)] == [5, 10]
    (p,) = one
    # duration_s cuts the arrivals drawn past it; the offered rate is what the kept ones make
    assert len(p.requests) == len(p.schedule) < 40 and p.schedule[-1] <= 1.0
    assert p.offered_rate == pytest.approx(len(p.schedule) / p.schedule[-1])
    assert sc.config_json(10.0)["rates"] == [10.0] and sc.config_json(None)["rates"] == [5.0, 10.0]
    (c,) = scenario({"type": "concurrency"}).passes(reqs, seed=0, batch=4, rate=None)
    assert c.in_flight == c.concurrency == 4  # default: the cell's batch


# --- run(ctx) on a real backend ------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    from backends.torch_backend import TorchBackend, TorchOptions
    from workloads.zoo import ModelSpec, get_model

    be = TorchBackend(TorchOptions(device="cpu", threads=1))
    spec = ModelSpec(get_model("tiny"), seed=0)
    be.load(spec, "fp32", 2, 48)
    yield be, spec
    be.close()


def context(be, spec, cell, meters=(), settings=None) -> CellContext:
    return CellContext(backend=be, cell=cell, vocab_size=spec.args.vocab_size, seed=5, warmup=1, repetitions=3,
                       meters=list(meters), energy_settings=settings or EnergySettings())


def test_offline_run_measures_the_seeded_batch(tiny):
    from harness.meters import EstimateMeter

    be, spec = tiny
    seen = []
    prefill = be.prefill
    be.prefill = lambda ids: (seen.append(ids.copy()), prefill(ids))[1]
    cell = PlannedCell("torch-cpu", "torch", "tiny", "fp32", 2, 12, 6, "offline")
    meter = EstimateMeter({"watts": 20.0})
    meter.start()
    try:
        out = scenario({"type": "offline"}).run(context(be, spec, cell, [meter], EnergySettings(
            idle_s=0.02, min_window_s=0.05, min_updates=1)))
        bare = scenario({"type": "offline"}).run(context(be, spec, cell))
    finally:
        del be.prefill
    # the prompts every figure was measured on: seed + 7919 * prompt_len + batch
    assert np.array_equal(seen[0], prompt_tokens(spec.args.vocab_size, 2, 12, 5 + 7919 * 12 + 2))
    assert out.status == "ok" and out.prepare_s is not None
    assert out.tokens == {"prompt_per_rep": 24, "generated_per_rep": 12, "repetitions": 3, "warmup": 1}
    assert set(out.metrics) >= {"prefill_tps", "decode_tps", "ttft_s", "tpot_s", "e2e_s"}
    assert out.metrics["decode_tps"]["n"] == 3 and len(out.samples["e2e_s"]) == 3
    e = out.energy
    assert e.window == "phases" and list(e.windows) == ["idle-before", "prefill", "generation", "idle-after"]
    (m,) = e.meters
    assert m.quality == "estimate" and m.j_per_generated_token_gross == pytest.approx(
        (m.windows["generation"]["gross_j"] / m.windows["generation"]["repeats"]
         - m.windows["prefill"]["gross_j"] / m.windows["prefill"]["repeats"]) / (12 - 2))
    assert bare.energy is None and bare.timeline == []  # no meters: the worker says why


def test_request_run_over_the_engine_like_the_worker(tiny):
    from harness.meters import EstimateMeter

    be, spec = tiny
    cell = PlannedCell("torch-cpu", "torch", "tiny", "fp32", 2, 6, 4, "concurrency")
    meter = EstimateMeter({"watts": 30.0})
    meter.start()
    sc = scenario({"type": "concurrency", "requests": 6, "warmup_requests": 1})
    out = sc.run(context(be, spec, cell, [meter], EnergySettings(idle_s=0.05, min_window_s=0.01, min_updates=1)))
    assert out.status == "ok" and out.warnings == [] and out.runs is None
    assert out.metrics["ok"] == 6 and all(r["n_generated"] == 4 for r in out.requests)
    assert out.sut["sut"] == "in-process" and out.sut["max_batch"] == 2 and out.sut["max_seq"] == 10
    assert sum(out.sut["engine_stats"]["batch_sizes"].values()) >= 1
    assert out.scenario_config["type"] == "concurrency" and out.summary[0]["concurrency"] == 2
    e = out.energy
    assert e.window == "steady" and e.status == "ok" and list(e.windows) == ["idle-before", "steady"]
    (m,) = e.meters
    assert m.idle_w == pytest.approx(30.0) and m.warnings == []
    assert out.summary[0]["j_per_output_token"] == m.j_per_generated_token_gross
    json.dumps(dataclasses.asdict(out), allow_nan=False)
