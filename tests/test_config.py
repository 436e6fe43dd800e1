"""Suite errors name the file, key, line and what was expected; all at once."""
import pytest

from harness.config import ConfigError, load_plan, resolve_suite_path

GOOD = """\
name: t
backends:
  - type: torch
    options: {device: cpu, threads: 1}
workloads:
  - model: tiny
    dtypes: [fp32, bf16]
    batch_sizes: [1, 2]
    prompt_lens: [8]
    gen_lens: [4, 6]
"""


def test_plan_expands_cells(write_suite):
    plan = load_plan(write_suite(GOOD))
    assert len(plan.cells) == 2 * 2 * 1 * 2
    assert plan.cells[0].backend == "torch-cpu"
    assert {c.group for c in plan.cells} == {("torch-cpu", "tiny", "fp32"), ("torch-cpu", "tiny", "bf16")}
    assert len({c.id for c in plan.cells}) == len(plan.cells)


def test_shipped_smoke_suite_is_valid():
    plan = load_plan(resolve_suite_path(None))
    assert plan.suite.name == "smoke" and plan.cells


def errors(write_suite, text):
    with pytest.raises(ConfigError) as e:
        load_plan(write_suite(text))
    return e.value.problems


def test_unknown_key_with_did_you_mean_and_line(write_suite):
    probs = errors(write_suite, GOOD + "repetitons: 3\n")
    assert len(probs) == 1
    assert "suite.yaml:11: repetitons: unknown key (did you mean 'repetitions'?)" in probs[0]


def test_wrong_types_and_ranges_all_reported(write_suite):
    text = GOOD.replace("batch_sizes: [1, 2]", "batch_sizes: [1, two]").replace("threads: 1", "threads: 0")
    text += "warmup: -1\nrepetitions: lots\n"
    probs = errors(write_suite, text)
    joined = "\n".join(probs)
    assert "suite.yaml:8: workloads[0].batch_sizes[1]: expected an integer, got 'two'" in joined
    assert "backends[0].options.threads: expected a value from 1 to 4096, got 0" in joined
    assert "warmup: expected a value from 0 to 1000, got -1" in joined
    assert "repetitions: expected an integer, got 'lots'" in joined
    assert len(probs) == 4


def test_unknown_model_and_backend(write_suite):
    text = GOOD.replace("model: tiny", "model: tinyy").replace("type: torch", "type: tensorrt")
    probs = errors(write_suite, text)
    joined = "\n".join(probs)
    assert "backends[0].type: unknown backend 'tensorrt'" in joined and "registered: " in joined
    assert "workloads[0].model: unknown model 'tinyy' (did you mean 'tiny'?)" in joined


def test_dtype_backend_cannot_run(write_suite):
    text = GOOD.replace("[fp32, bf16]", "[fp32, int3]")
    probs = errors(write_suite, text)
    assert any("workloads[0].dtypes[1]: expected one of fp32, bf16, fp16, got 'int3'" in p for p in probs)


def test_missing_required_and_unknown_backend_option(write_suite):
    probs = errors(write_suite, "name: t\nbackends:\n  - type: torch\n    options: {devise: cpu}\n")
    joined = "\n".join(probs)
    assert "backends[0].options.devise: unknown key (did you mean 'device'?)" in joined
    assert "workloads: required key missing" in joined


def test_generation_must_fit_the_model(write_suite):
    probs = errors(write_suite, GOOD.replace("prompt_lens: [8]", "prompt_lens: [2045]"))
    assert any("exceeds tiny's 2048 positions" in p for p in probs)


def test_not_yaml_and_missing_file(write_suite, tmp_path):
    probs = errors(write_suite, "name: [unclosed\n")
    assert probs[0].startswith(str(tmp_path / "suite.yaml")) and "not valid YAML" in probs[0]
    with pytest.raises(ConfigError, match="cannot read suite file"):
        load_plan(tmp_path / "nope.yaml")


def test_yaml_is_loaded_safely(write_suite):
    probs = errors(write_suite, "name: !!python/object/apply:os.system ['echo pwned']\n")
    assert "not valid YAML" in probs[0]


def test_scenario_sweep_expands_one_cell_per_rate(write_suite):
    plan = load_plan(write_suite(GOOD + "scenario: {type: server, rates: [1, 2.5], requests: 4}\n"))
    assert {c.scenario for c in plan.cells} == {"server@1", "server@2.5"}
    assert {c.rate for c in plan.cells} == {1.0, 2.5}
    assert len(plan.cells) == 2 * 8


def test_scenario_errors(write_suite):
    probs = errors(write_suite, GOOD + "scenario: burst\n")
    assert any("scenario: expected one of offline, single-stream, concurrency, server" in p for p in probs)
    probs = errors(write_suite, GOOD + "scenario: {type: server, requets: 3}\n")
    joined = "\n".join(probs)
    assert "scenario.requets: unknown key (did you mean 'requests'?)" in joined
    assert "scenario.rates: the server scenario needs a list of rates" in joined


def test_duplicate_keys_are_reported(write_suite):
    probs = errors(write_suite, GOOD + "warmup: 1\nwarmup: 2\n")
    assert len(probs) == 1 and "suite.yaml:12: warmup: key given twice" in probs[0]


REQUEST_BACKEND = """\
name: t
backends:
  - type: openai-http
    name: npu
    options: {url: "http://127.0.0.1:9"}
workloads:
  - model: tiny
    batch_sizes: [1]
    prompt_lens: [8]
    gen_lens: [4]
"""


def test_a_request_backend_runs_under_request_scenarios_only(write_suite):
    probs = errors(write_suite, REQUEST_BACKEND)  # the default scenario is offline, the batch path
    assert len(probs) == 1 and "suite.yaml:3: backends[0].type: backend 'npu' is a request backend" in probs[0]
    assert "use single-stream, concurrency or server" in probs[0]
    plan = load_plan(write_suite(REQUEST_BACKEND + "scenario: {type: concurrency, concurrency: 4, requests: 8}\n"))
    assert [c.scenario for c in plan.cells] == ["concurrency"] and plan.scenario.config.concurrency == 4


def test_offline_refuses_request_keys_instead_of_ignoring_them(write_suite):
    probs = errors(write_suite, GOOD + "scenario: {type: offline, requests: 64}\n")
    assert len(probs) == 1 and "suite.yaml:11: scenario.requests: unknown key" in probs[0]
    assert "belong to the request scenarios" in probs[0]
