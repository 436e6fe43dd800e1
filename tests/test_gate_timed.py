"""The accuracy gate checks the tokens the timed path produced, not only logits().

Unit tests pin the agreement rule at its boundary; the rest run `python -m harness run`
for real (worker processes, the faulty backend plugin pip-installed as in
tests/test_plugin.py): a backend whose decode() returns zeros fast while its logits()
are honest is INVALID and supports no claim, and the real backends' timed tokens agree
with the reference on every token at fp32.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import yaml

from harness.accuracy import AGREEMENT_THRESHOLD, Disagreement, agreeing, judge
from harness.cells import load_cells
from harness.claims import load_claims
from harness.scenarios.base import TimedOutput
from harness.verdicts import SUPPORTED, verify
from tests.test_plugin import ROOT, check_results, faulty, faulty_plugin, harness, plugin_env  # noqa: F401

TOL = 1e-4  # the README's fp32 tolerance: written out, not read from the table under test


# --- the agreement rule ---------------------------------------------------------------

def test_a_token_exactly_at_the_tolerance_floor_agrees_and_just_below_does_not():
    ref = np.array([[3.0, -8.0, 1.0, 0.5], [3.0, -8.0, 1.0, 0.5]])
    floor = 3.0 - TOL * 8.0  # max - tol * max|logit|: the scale is the largest |logit|, here a negative one
    ref[0, 2] = floor
    ref[1, 2] = np.nextafter(floor, -np.inf)
    assert agreeing(ref, np.array([2, 2]), TOL).tolist() == [True, False]
    assert agreeing(ref, np.array([0, 0]), TOL).tolist() == [True, True]  # the greedy choice itself


def test_the_scale_is_taken_at_each_position():
    # the same gap to the max agrees where the logits are large and not where they are small
    ref = np.array([[1000.0, 1000.0 - 0.05, 0.0], [1.0, 1.0 - 0.05, 0.0]])
    assert agreeing(ref, np.array([1, 1]), TOL).tolist() == [True, False]


def test_tokens_outside_the_vocabulary_or_on_non_finite_logits_disagree():
    ref = np.array([[1.0, 2.0, 3.0], [1.0, np.nan, 3.0], [1.0, 2.0, 3.0]])
    assert agreeing(ref, np.array([3, 1, -1]), TOL).tolist() == [False, False, False]


def test_agreement_below_the_threshold_is_a_fail_naming_the_timed_path():
    assert AGREEMENT_THRESHOLD == 0.98
    first = Disagreement(sequence=1, position=7, token=0, reference_token=42)

    def with_disagreeing(k: int):
        flags = [np.ones(25, bool), np.r_[np.ones(25 - k, bool), np.zeros(k, bool)]]
        return judge(flags, first if k else None, sequences=2, outputs=1, repetitions=5, precision="fp32",
                     reference="ref")

    one, two = with_disagreeing(1), with_disagreeing(2)
    assert one.passed is True and one.agreement == 0.98 and one.checked_tokens == 50
    assert two.passed is False and two.status == "fail" and two.agreement == 0.96
    assert "timed path" in two.reason and "sequence 1, produced token 7: 0, reference 42" in two.reason
    assert with_disagreeing(0).to_json()["agreement"] == 1.0
    assert "first_disagreement" not in with_disagreeing(0).to_json()


def test_timed_output_keeps_each_distinct_output_once():
    timed = TimedOutput(np.zeros((2, 3), np.int64))
    a, b = np.arange(8).reshape(2, 4), np.zeros((2, 4), np.int64)
    for out in (a, a.copy(), b, a):
        timed.add(out)
    assert timed.repetitions == 4 and len(timed.outputs) == 2
    assert np.array_equal(timed.outputs[0], a) and np.array_equal(timed.outputs[1], b)


# --- real runs --------------------------------------------------------------------------

def _suite(backends: list[dict], *, gen_len: int = 8, batch_sizes=(1,), repetitions: int = 1,
           scenario: str | dict = "offline") -> str:
    return yaml.safe_dump({
        "name": "gate", "warmup": 0, "repetitions": repetitions, "timeout_s": 300, "backends": backends,
        "workloads": [{"model": "tiny", "dtypes": ["fp32"], "batch_sizes": list(batch_sizes), "prompt_lens": [8],
                       "gen_lens": [gen_len]}],
        "energy": {"enabled": False}, "scenario": scenario}, sort_keys=False)


def _run(tmp_path: Path, text: str, env: dict | None = None) -> tuple[Path, dict]:
    (tmp_path / "suite.yaml").write_text(text)
    proc = harness("run", str(tmp_path / "suite.yaml"), "--output", str(tmp_path / "out"), "--name", "r", "--quiet",
                   env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return tmp_path / "out" / "r", check_results(tmp_path / "out" / "r")


def _torch_cpu(name: str = "torch") -> dict:
    return {"type": "torch", "name": name, "options": {"device": "cpu", "threads": 1}}


def test_wrong_tokens_with_honest_logits_is_invalid_and_supports_no_claim(faulty_plugin, tmp_path):
    run_dir, records = _run(tmp_path, _suite([faulty("cheat", fault="wrong-tokens"), _torch_cpu()], gen_len=16,
                                             repetitions=5), env=plugin_env(faulty_plugin))
    cheat, honest = records["cheat/tiny/fp32/b1/p8/g16/offline"], records["torch/tiny/fp32/b1/p8/g16/offline"]

    assert cheat.status == "invalid" and cheat.valid is False and cheat.invalid
    acc = cheat.accuracy
    assert acc["logits_passed"] is True and acc["rel_err"] <= TOL  # logits() alone would have passed it
    timed = acc["timed_output"]
    assert timed["status"] == "fail" and timed["passed"] is False and timed["checked_tokens"] == 16
    # the prefill token is honest, then zeros; a zero the reference also chose would count, hence <=
    assert timed["agreement"] <= 2 / 16 and timed["first_disagreement"]["token"] == 0
    assert timed["first_disagreement"]["position"] >= 1
    assert acc["passed"] is False and "timed path" in acc["reason"]

    assert honest.ok and honest.accuracy["timed_output"]["agreement"] == 1.0

    claims = tmp_path / "claims.yaml"
    claims.write_text(yaml.safe_dump({"claims": [{
        "name": "plugin is 100x faster than torch", "metric": "decode_tps", "subject": {"backend": "cheat"},
        "baseline": {"backend": "torch"}, "workload": {"model": "tiny", "batch": 1, "prompt_len": 8, "gen_len": 16},
        "at_least": 100}]}))
    (v,) = verify(load_claims(claims), load_cells([run_dir]))
    assert v.verdict != SUPPORTED
    assert "accuracy gate" in (v.blocked or "") + " ".join(v.caveats)
    # what the gate prevents: the measured ratio alone would have supported the claim
    assert v.comparison is not None and v.comparison.ratio.ci_low >= 100


BACKENDS = [_torch_cpu(), {"type": "onnxruntime", "name": "onnx", "options": {"intra_op_threads": 1}}]
if importlib.util.find_spec("llama_cpp") is not None:
    BACKENDS.append({"type": "llama.cpp", "name": "llamacpp", "options": {"threads": 1}})


def test_real_backends_timed_tokens_agree_with_the_reference_at_fp32(tmp_path):
    # batch 5: one more than the gate re-scores, so the bound is exercised too
    _, records = _run(tmp_path, _suite(BACKENDS, gen_len=12, batch_sizes=[5], repetitions=2))
    assert len(records) == len(BACKENDS)
    for r in records.values():
        timed = r.accuracy["timed_output"]
        assert r.ok, (r.cell_id, r.accuracy, r.error)
        assert timed["status"] == "pass" and timed["agreement"] == 1.0, (r.cell_id, timed)
        assert timed["sequences"] == 4 and timed["checked_tokens"] == 4 * 12 and timed["repetitions"] == 2
        assert timed["outputs"] == 1, (r.cell_id, timed)  # greedy decoding is deterministic here


def test_request_scenario_cells_check_the_tokens_the_engine_streamed(tmp_path):
    # batch 2: the engine batches requests, so the streamed tokens come from batched decode steps
    scenario = {"type": "concurrency", "concurrency": 2, "requests": 6, "warmup_requests": 0}
    _, records = _run(tmp_path, _suite([_torch_cpu()], gen_len=6, batch_sizes=[2], scenario=scenario))
    (r,) = records.values()
    timed = r.accuracy["timed_output"]
    assert r.ok and r.accuracy["passed"] is True and r.accuracy["logits_passed"] is True
    assert timed["status"] == "pass" and timed["agreement"] == 1.0, timed
    # the first TIMED_SEQUENCES requests, every produced token of each
    assert timed["sequences"] == 4 and timed["checked_tokens"] == 4 * 6 and timed["repetitions"] == 1
    assert "in-process engine" in timed["reference"]


def test_energy_window_runs_are_checked_too(tmp_path):
    text = yaml.safe_load(_suite([_torch_cpu()], gen_len=4))
    text["energy"] = {"enabled": True, "idle_s": 0.05, "min_window_s": 0.2, "min_updates": 1}
    text["meters"] = [{"type": "estimate", "watts": 10}]
    _, records = _run(tmp_path, yaml.safe_dump(text))
    (r,) = records.values()
    timed = r.accuracy["timed_output"]
    assert r.ok and r.energy.status == "ok", r.energy
    # one timed repetition, then the generation window repeats the run: all of them re-scored
    assert timed["repetitions"] > 1 and timed["agreement"] == 1.0 and timed["outputs"] == 1
