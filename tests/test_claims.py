"""Claim files and verdicts over hand-built result folders: each verdict, each caveat,
exit codes and error messages."""
import json
from pathlib import Path

import numpy as np
import pytest

from harness.cells import load_cells
from harness.claims import Claim, Selector, Workload, load_claims
from harness.cli import main
from harness.figures import metric_value
from harness.records import record_from_json
from harness.schema import ConfigError
from harness.verdicts import INCONCLUSIVE, REFUTED, SUPPORTED, evaluate, exit_code, verdicts_markdown


def record(backend="npu", device="npu:0", batch=1, decode=100.0, spread=0.01, n=6, tpj=None, scope="gpu-board",
           method="counter", quality="ok", precision="fp32", accuracy=True, decode_pct=80.0, status="ok",
           model="m", prompt_len=64, gen_len=32, seed=0, energy=None, prefill_pct=None, roofline=None):
    """One cell record shaped like the runner's, with lognormal repetition noise. Its roofline has
    the shape records had before per-side flags ("suspect": either side) unless `roofline` is given."""
    rng = np.random.default_rng(seed)
    dec = list(decode * np.exp(rng.normal(0, spread, n)))
    ttft = [0.01 * float(np.exp(rng.normal(0, spread))) for _ in range(n)]
    e2e = [t + batch * (gen_len - 1) / d for t, d in zip(ttft, dec)]
    tpot = [(e - t) / (gen_len - 1) for e, t in zip(e2e, ttft)]

    def m(xs):
        return {"mean": float(np.mean(xs)), "sd": float(np.std(xs)), "median": float(np.median(xs)),
                "min": min(xs), "max": max(xs), "n": len(xs), "samples": xs}

    r = {"cell_id": f"{backend}/{model}/{precision}/b{batch}/p{prompt_len}/g{gen_len}/offline", "backend": backend,
         "backend_type": backend, "device": device, "model": model, "params": 1000, "dtype": precision,
         "precision": precision, "batch": batch, "prompt_len": prompt_len, "gen_len": gen_len, "scenario": "offline",
         "status": status, "valid": status == "ok",
         "metrics": {"decode_tps": m(dec), "prefill_tps": m([batch * prompt_len / t for t in ttft]), "ttft_s": m(ttft),
                     "tpot_s": m(tpot), "e2e_s": m(e2e)},
         "roofline": roofline if roofline is not None else {
             "decode_pct": decode_pct, "basis": "test",
             "suspect": any(p is not None and p > 100 for p in (decode_pct, prefill_pct)),
             **({} if prefill_pct is None else {"prefill_pct": prefill_pct})} if decode_pct is not None else {},
         "accuracy": ({"status": "pass", "passed": True, "rel_err": 1e-6, "tolerance": 1e-4} if accuracy is True else
                      {"status": "fail", "passed": False, "rel_err": 0.5, "tolerance": 1e-4} if accuracy is False else
                      {"status": "not checked", "passed": None})}
    if energy is not None:
        r["energy"] = energy
    elif tpj is not None:
        meter = {"meter": "nvml" if method == "counter" else method, "method": method, "scope": scope,
                 "quality": "estimate" if method == "estimate" else quality,
                 "reason": "constant 300 W x window time: an estimate" if method == "estimate" else
                 ("generation: 3 updates < 10" if quality == "short-window" else None),
                 "tokens_per_joule_gross": tpj, "j_per_generated_token_gross": 1 / tpj,
                 "j_per_prompt_token_gross": 0.1 / tpj, "generation_avg_w": 300.0, "idle_w": 50.0, "warnings": []}
        r["energy"] = {"meters": [meter], "tokens": {}}
    else:
        r["energy"] = {"status": "no meters"}
    if status == "failed":
        r["error"] = {"message": "boom"}
        r.pop("metrics")
    return r


def write_run(root: Path, name: str, records: list[dict], host="lab") -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"run_id": name, "suite": "t", "config": {"repetitions": 6},
                                            "inventory": {"hostname": host, "cpu": {"model": "X"}, "gpus": []}}))
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return d


def claim(**kw):
    """A Claim; subject, baseline and workload may be given as mappings, as a claims file writes them."""
    base = dict(name="c", metric="decode_tps", subject={"backend": "npu"}, baseline={"backend": "gpu"},
                workload={"model": "m", "batch": 1, "prompt_len": 64, "gen_len": 32}, at_least=2.0, required=True)
    base.update(kw)
    base["subject"], base["baseline"] = Selector(**base["subject"]), Selector(**base["baseline"])
    base["workload"] = Workload(**base["workload"])
    return Claim(**base)


def cells_of(tmp_path, subject: list[dict], baseline: list[dict]):
    a = write_run(tmp_path, "npu-run", subject)
    b = write_run(tmp_path, "gpu-run", baseline)
    return load_cells([a, b])


def gpu(**kw):
    kw.setdefault("backend", "gpu")
    kw.setdefault("device", "cuda:0")
    kw.setdefault("seed", 1)
    return record(**kw)


# --- verdicts -----------------------------------------------------------------------------------

def test_supported(tmp_path):
    cells = cells_of(tmp_path, [record(decode=1000)], [gpu(decode=100)])
    v = evaluate(claim(at_least=5), cells)
    assert v.verdict == SUPPORTED, v.reason
    assert 9 < v.comparison.ratio.ci_low <= v.comparison.ratio.ci_high < 11
    assert not v.failed_required


def test_refuted(tmp_path):
    cells = cells_of(tmp_path, [record(decode=200)], [gpu(decode=100)])
    v = evaluate(claim(at_least=100), cells)
    assert v.verdict == REFUTED and v.failed_required
    assert "upper bound" in v.reason


def test_inconclusive_when_interval_contains_factor(tmp_path):
    cells = cells_of(tmp_path, [record(decode=200, spread=0.3)], [gpu(decode=100, spread=0.3)])
    v = evaluate(claim(at_least=2), cells)
    assert v.verdict == INCONCLUSIVE and "contains 2" in v.reason


def test_lower_is_better_metric_is_inverted(tmp_path):
    # J/token: subject 0.01, baseline 1.0 -> 100x better
    cells = cells_of(tmp_path, [record(tpj=100.0)], [gpu(tpj=1.0)])
    v = evaluate(claim(metric="j_per_token", at_least=50), cells)
    assert v.comparison.ratio.ratio == pytest.approx(100, rel=0.05)
    assert v.verdict == SUPPORTED
    v = evaluate(claim(metric="ttft_s", at_least=1.5), cells)  # equal TTFT: refuted
    assert v.verdict == REFUTED


def test_invalid_subject_is_never_supported(tmp_path):
    cells = cells_of(tmp_path, [record(decode=1000, status="invalid", accuracy=False)], [gpu(decode=100)])
    v = evaluate(claim(at_least=2), cells)
    assert v.verdict == INCONCLUSIVE
    assert any("INVALID" in c for c in v.caveats)
    assert any("accuracy" in c for c in v.caveats)


def test_failed_and_missing_cells(tmp_path):
    cells = cells_of(tmp_path, [record(status="failed")], [gpu()])
    v = evaluate(claim(), cells)
    assert v.verdict == INCONCLUSIVE
    v = evaluate(claim(workload={"model": "other", "batch": 1, "prompt_len": 64, "gen_len": 32}), cells)
    assert v.verdict == INCONCLUSIVE and "no measured cell" in v.reason
    v = evaluate(claim(workload={"model": "m", "batch": 64, "prompt_len": 64, "gen_len": 32}), cells)
    assert "not measured at batch 64" in v.reason


def test_ambiguous_selector(tmp_path):
    a = write_run(tmp_path, "r1", [record(decode=500)])
    b = write_run(tmp_path, "r2", [record(decode=510), gpu(decode=100)])
    cells = load_cells([a, b])
    v = evaluate(claim(), cells)
    assert v.verdict == INCONCLUSIVE and "matches 2 cells" in v.reason
    v = evaluate(claim(subject={"backend": "npu", "run": "r1"}), cells)
    assert v.verdict == SUPPORTED


def test_best_baseline_configuration(tmp_path):
    baseline = [gpu(batch=1, tpj=1.0), gpu(batch=8, tpj=20.0, seed=2),
                gpu(batch=64, tpj=500.0, status="invalid", accuracy=False, seed=3)]  # invalid: never best
    cells = cells_of(tmp_path, [record(batch=1, tpj=50.0), record(batch=8, tpj=60.0, seed=4)], baseline)
    v = evaluate(claim(metric="tokens_per_joule", at_least=10), cells)
    assert v.verdict == SUPPORTED  # 50x against batch 1 ...
    assert v.best_baseline.baseline.record.batch == 8  # ... but the baseline does best at batch 8
    assert v.best_baseline_verdict == REFUTED  # 2.5x against it
    assert any("does best at batch 8" in c and "REFUTED" in c for c in v.caveats)
    assert any("INVALID" in c and "b64" in c for c in v.caveats)
    best = evaluate(claim(metric="tokens_per_joule", at_least=10,
                          workload={"model": "m", "batch": "best", "prompt_len": 64, "gen_len": 32}), cells)
    assert best.comparison.baseline.record.batch == 8 and best.comparison.subject.record.batch == 8
    assert best.verdict == REFUTED


# --- caveats -------------------------------------------------------------------------------------

def _caveats(tmp_path, s, b, **kw):
    v = evaluate(claim(**kw), cells_of(tmp_path, [s], [b]))
    return v, " | ".join(v.caveats)


def test_caveat_energy_scopes_differ(tmp_path):
    v, text = _caveats(tmp_path, record(tpj=100.0, scope="npu-module"), gpu(tpj=1.0, scope="wall"),
                       metric="tokens_per_joule", at_least=10)
    assert "energy scopes differ" in text and "npu-module" in text and "wall" in text
    assert "timing only" in text


def test_caveat_precision_and_accuracy_differ(tmp_path):
    v, text = _caveats(tmp_path, record(decode=1000, precision="int8", accuracy=None), gpu(decode=100))
    assert "precisions differ" in text and "int8" in text
    assert "accuracy not established" in text and "not checked" in text


def test_caveat_baseline_roofline(tmp_path):
    _, text = _caveats(tmp_path, record(decode=1000), gpu(decode=100, decode_pct=8.0))
    assert "only 8 % of its decode roofline" in text
    _, text = _caveats(tmp_path / "b", record(decode=1000), gpu(decode=100, decode_pct=None))
    assert "roofline unknown" in text and "harness calibrate" in text
    _, text = _caveats(tmp_path / "c", record(decode=1000, decode_pct=140.0), gpu(decode=100))
    assert "SUSPECT" in text


# --- the roofline of the claim's metric ---------------------------------------------------------

ABOVE = "faster than the hardware allows; check the measurement"


@pytest.mark.parametrize("at_least,would_be", [(5, SUPPORTED), (100, REFUTED)])
def test_subject_above_its_decode_roofline_is_never_a_verdict(tmp_path, at_least, would_be):
    cells = cells_of(tmp_path, [record(decode=1000, decode_pct=130.0)], [gpu(decode=100)])
    v = evaluate(claim(at_least=at_least), cells)
    assert _verdict_of_ratio(v, at_least) == would_be  # what the ratio alone says ...
    assert v.verdict == INCONCLUSIVE  # ... never counts
    assert v.reason == f"subject at 130 % of its decode roofline: {ABOVE}"
    assert any("130 % of its decode roofline (SUSPECT)" in c for c in v.caveats)
    text = verdicts_markdown([v])
    assert f"-> {would_be}" not in text and f"**{would_be}**" not in text
    assert "(not judged)" in text and "(no verdict, for the verdict's reason)" in text


def _verdict_of_ratio(v, at_least):
    r = v.comparison.ratio
    return SUPPORTED if r.ci_low >= at_least else REFUTED if r.ci_high < at_least else INCONCLUSIVE


def test_baseline_above_its_roofline_blocks_the_verdict_too(tmp_path):
    cells = cells_of(tmp_path, [record(decode=1000)], [gpu(decode=100, decode_pct=250.0)])
    v = evaluate(claim(at_least=5), cells)
    assert v.verdict == INCONCLUSIVE and v.reason == f"baseline at 250 % of its decode roofline: {ABOVE}"


def test_a_best_baseline_above_its_roofline_gets_no_verdict_of_its_own(tmp_path):
    baseline = [gpu(batch=1, decode=100), gpu(batch=8, decode=900, seed=2, decode_pct=250.0)]
    v = evaluate(claim(at_least=5), cells_of(tmp_path, [record(decode=1000)], baseline))
    assert v.verdict == SUPPORTED and v.best_baseline.baseline.record.batch == 8
    assert v.best_baseline_verdict is None
    assert v.best_baseline_blocked == f"baseline at 250 % of its decode roofline: {ABOVE}"
    assert f"(no verdict: baseline at 250 % of its decode roofline: {ABOVE})" in verdicts_markdown([v])


@pytest.mark.parametrize("roof", [
    {"decode_pct": 80.0, "prefill_pct": 150.0, "decode_suspect": False, "prefill_suspect": True, "suspect": True},
    {"decode_pct": 80.0, "prefill_pct": 150.0, "suspect": True},  # a record from before the per-side flags
], ids=["per-side", "old-shape"])
def test_suspect_is_judged_per_metric(tmp_path, roof):
    cells = cells_of(tmp_path, [record(decode=1000, roofline=roof)], [gpu(decode=100, prefill_pct=60.0)])
    v = evaluate(claim(at_least=5), cells)  # decode: below its decode roofline, judged
    assert v.verdict == SUPPORTED, v.reason
    assert any("subject's prefill is at 150 % of its prefill roofline (SUSPECT)" in c and "still judged" in c
               for c in v.caveats), v.caveats
    for metric in ("ttft_s", "prefill_tps", "e2e_s"):  # bounded by the prefill roofline
        v = evaluate(claim(metric=metric, at_least=0.5), cells)
        assert v.verdict == INCONCLUSIVE and v.reason == f"subject at 150 % of its prefill roofline: {ABOVE}", metric


def test_roofline_caveats_name_the_roofline_of_the_metric(tmp_path):
    cells = cells_of(tmp_path, [record(decode=1000)], [gpu(decode=100, decode_pct=80.0, prefill_pct=8.0)])
    text = " | ".join(evaluate(claim(metric="ttft_s", at_least=0.5), cells).caveats)
    assert "baseline reaches only 8 % of its prefill roofline" in text and "decode roofline" not in text
    text = " | ".join(evaluate(claim(metric="decode_tps", at_least=5), cells).caveats)
    assert "roofline" not in text  # 80 % of the decode roofline: nothing to say
    cells = cells_of(tmp_path / "b", [record(decode=1000)], [gpu(decode=100, decode_pct=8.0)])
    text = " | ".join(evaluate(claim(metric="e2e_s", at_least=0.5), cells).caveats)
    assert "only 8 % of its decode roofline" in text and "baseline prefill roofline unknown" in text
    text = " | ".join(evaluate(claim(metric="j_per_prompt_token", at_least=0.5), cells).caveats)
    assert "baseline prefill roofline unknown" in text and "decode roofline" not in text


@pytest.mark.parametrize("status,accuracy,label", [("invalid", False, "INVALID (failed the accuracy gate)"),
                                                   ("failed", True, "FAILED")])
def test_invalid_or_failed_subject_prints_no_ratio_verdict(tmp_path, status, accuracy, label):
    baseline = [gpu(batch=1, decode=100), gpu(batch=8, decode=150, seed=2)]
    cells = cells_of(tmp_path, [record(decode=1000, status=status, accuracy=accuracy)], baseline)
    v = evaluate(claim(at_least=2), cells)
    assert v.verdict == INCONCLUSIVE and v.best_baseline_verdict is None
    assert v.reason.startswith(f"subject cell npu fp32 b1 p64 g32 [npu-run] is {label}")
    text = verdicts_markdown([v])
    for verdict in (SUPPORTED, REFUTED):
        assert f"-> {verdict}" not in text and f"would be {verdict}" not in text
    assert "ratio against it" in text and "(no verdict, for the verdict's reason)" in text
    assert "against that configuration the ratio is" in text


def test_caveat_short_window(tmp_path):
    _, text = _caveats(tmp_path, record(tpj=100.0, quality="short-window"), gpu(tpj=1.0),
                       metric="tokens_per_joule", at_least=10)
    assert "window too short" in text


def test_estimate_cannot_decide_a_verdict(tmp_path):
    v, text = _caveats(tmp_path, record(tpj=100.0, method="estimate"), gpu(tpj=1.0),
                       metric="tokens_per_joule", at_least=10)
    assert "ESTIMATE" in text
    assert v.verdict == INCONCLUSIVE and "would be SUPPORTED" in v.reason


def test_caveat_missing_repetitions(tmp_path):
    _, text = _caveats(tmp_path, record(decode=1000, n=3), gpu(decode=100))
    assert "subject has 3 repetition(s)" in text


def test_no_energy_is_inconclusive(tmp_path):
    v, text = _caveats(tmp_path, record(), gpu(tpj=1.0), metric="tokens_per_joule", at_least=10)
    assert v.verdict == INCONCLUSIVE and "no tokens_per_joule figure" in text


def test_energy_samples_follow_timing():
    r = record_from_json(record(tpj=10.0, n=5, spread=0.1))
    mv = metric_value(r, "tokens_per_joule")
    assert mv.n == 5 and np.median(mv.samples) == pytest.approx(10.0)
    assert metric_value(r, "j_per_1k_tokens").summary().median == pytest.approx(100.0, rel=0.01)


# --- files, CLI and exit codes -----------------------------------------------------------------------

CLAIMS = """\
claims:
  - name: npu 5x faster
    metric: decode_tps
    subject: {backend: npu}
    baseline: {backend: gpu}
    workload: {model: m, batch: 1, prompt_len: 64, gen_len: 32}
    at_least: 5
    required: true
  - name: npu 100x more efficient
    metric: tokens_per_joule
    subject: {backend: npu}
    baseline: {backend: gpu}
    workload: {model: m, batch: best, prompt_len: 64, gen_len: 32}
    factor: "at least 100x"
    required: {req}
"""


def test_load_claims_and_factor_forms(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(CLAIMS.replace("{req}", "false"))
    cs = load_claims(p)
    assert [c.at_least for c in cs] == [5.0, 100.0]
    assert cs[1].workload.batch == "best" and cs[0].required and not cs[1].required
    assert cs[0].where.endswith(":2")


@pytest.mark.parametrize("bad,expect", [
    ("metric: decode_tps", "missing key `at_least`"),
    ("metric: joules\n    at_least: 2", "claims[0].metric: expected one of"),
    ("metric: decode_tps\n    at_least: -1", "claims[0].at_least: expected a number > 0"),
    ("metric: decode_tps\n    at_least: 2\n    colour: red", "claims[0].colour: unknown key"),
])
def test_claim_errors_name_file_line_and_key(tmp_path, bad, expect):
    p = tmp_path / "bad.yaml"
    p.write_text("claims:\n  - name: x\n    subject: {backend: a}\n    baseline: {backend: b}\n"
                 "    workload: {model: m, batch: 1, prompt_len: 8, gen_len: 8}\n    " + bad + "\n")
    with pytest.raises(ConfigError) as e:
        load_claims(p)
    assert str(p) in str(e.value) and expect in str(e.value)
    assert f"{p}:" in str(e.value)  # a line number follows the file


def test_every_mistake_in_a_claims_file_is_listed_with_its_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("""\
claims:
  - name: first
    metric: joules
    subject: {backend: a, colour: red}
    baseline: {}
    workload: {model: m, batch: 0, prompt_len: 8, gen_len: 8}
    at_least: 2
    factor: 3x
  - name: second
    metric: decode_tps
    subject: {backend: a}
    baseline: {backend: b}
    workload: {model: m, batch: best, prompt_len: 8}
    factor: "at least lots"
    required: maybe
""")
    with pytest.raises(ConfigError) as e:
        load_claims(p)
    expected = [f"{p}:3: claims[0].metric: expected one of decode_tps, prefill_tps",
                f"{p}:4: claims[0].subject.colour: unknown key",
                f"{p}:5: claims[0].baseline: expected at least one of run, backend",
                f"{p}:6: claims[0].workload.batch: expected a batch size >= 1 or \"best\", got 0",
                f"{p}:8: claims[0].factor: give either `at_least: N` or `factor: \"at least Nx\"`, not both",
                f"{p}:13: claims[1].workload.gen_len: required key missing",
                f"{p}:14: claims[1].factor: expected \"at least Nx\" or a number > 0, got 'at least lots'",
                f"{p}:15: claims[1].required: expected true or false, got 'maybe'"]
    for want in expected:
        assert any(line.startswith(want) for line in e.value.problems), (want, e.value.problems)
    assert len(e.value.problems) == len(expected), e.value.problems


def test_claim_file_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("claims: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_claims(p)
    p.write_text("claims:\n  - metric: decode_tps\n    subject: {backend: a}\n    baseline: {backend: b}\n"
                 "    workload: {model: m, batch: big, prompt_len: 8, gen_len: 8}\n    at_least: 2\n")
    with pytest.raises(ConfigError, match=rf"{p}:5: claims\[0\].workload.batch: expected a batch size >= 1 or \"best\""):
        load_claims(p)
    with pytest.raises(ConfigError, match="cannot read claims file"):
        load_claims(tmp_path / "none.yaml")


def _runs(tmp_path):
    a = write_run(tmp_path, "npu-run", [record(decode=1000, tpj=50.0), record(batch=8, decode=4000, tpj=80.0, seed=3)])
    b = write_run(tmp_path, "gpu-run", [gpu(decode=100, tpj=1.0), gpu(batch=8, decode=700, tpj=5.0, seed=4)])
    return a, b


def test_verify_exit_codes(tmp_path, capsys):
    a, b = _runs(tmp_path)
    p = tmp_path / "claims.yaml"
    md = tmp_path / "v.md"
    p.write_text(CLAIMS.replace("{req}", "false"))
    assert main(["verify", str(p), str(a), str(b), "--markdown", str(md)]) == 0  # refuted but not required
    out = capsys.readouterr().out
    assert "SUPPORTED" in out and "REFUTED" in out
    text = md.read_text()
    assert "| 1 | npu 5x faster |" in text and "**REFUTED**" in text and "Best baseline configuration" in text
    p.write_text(CLAIMS.replace("{req}", "true"))
    assert main(["verify", str(p), str(a), str(b), "--markdown", str(md)]) == 1
    assert "required claim(s) refuted" in capsys.readouterr().out
    # default Markdown location: inside the first run folder
    p.write_text(CLAIMS.replace("{req}", "false").replace("at_least: 5", "at_least: 10"))
    assert main(["verify", str(p), str(a), str(b)]) == 0
    assert (a / "verdicts-claims.md").exists()


def test_verify_strict_fails_on_inconclusive_required(tmp_path, capsys):
    a, b = _runs(tmp_path)
    p = tmp_path / "claims.yaml"
    # the required claim at the measured factor (10x): its interval contains the factor. (A required
    # claim on a workload nobody ran no longer passes without --strict: tests/test_report_front.py)
    p.write_text(CLAIMS.replace("{req}", "false").replace("at_least: 5", "at_least: 10"))
    assert main(["verify", str(p), str(a), str(b), "--markdown", str(tmp_path / "x.md")]) == 0
    assert "INCONCLUSIVE" in capsys.readouterr().out
    assert main(["verify", str(p), str(a), str(b), "--markdown", str(tmp_path / "x.md"), "--strict"]) == 1
    assert "1 required claim(s) not supported: npu 5x faster" in capsys.readouterr().out


def test_verify_user_errors_exit_2(tmp_path, capsys):
    a, b = _runs(tmp_path)
    p = tmp_path / "claims.yaml"
    p.write_text("claims:\n  - name: x\n")
    assert main(["verify", str(p), str(a)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    # every problem of the file at once, each on its own line naming the file, the line and the key
    problems = [line for line in err.strip().splitlines() if not line.startswith("error:")]
    assert len(problems) == 5 and all(line.startswith(f"{p}:2: claims[0]") for line in problems), problems
    for key in ("metric", "subject", "baseline", "workload"):
        assert f"{p}:2: claims[0].{key}: required key missing" in problems
    p.write_text(CLAIMS.replace("{req}", "true"))
    assert main(["verify", str(p), str(tmp_path / "nope")]) == 2
    assert "no such run folder" in capsys.readouterr().err


def test_exit_code_helper(tmp_path):
    a, b = _runs(tmp_path)
    cells = load_cells([a, b])
    vs = [evaluate(claim(at_least=1000, required=False), cells)]
    assert vs[0].verdict == REFUTED and exit_code(vs) == 0
    vs = [evaluate(claim(at_least=1000, required=True), cells)]
    assert exit_code(vs) == 1
    assert "REFUTED" in verdicts_markdown(vs)


def test_shipped_example_files_parse():
    root = Path(__file__).resolve().parent.parent / "workloads"
    cs = load_claims(root / "claims.example.yaml")
    assert len(cs) >= 3 and any(c.required for c in cs) and any(c.workload.batch == "best" for c in cs)
    from harness.report.prices import load_prices

    p = load_prices(root / "prices.example.yaml")
    assert p.electricity_per_kwh > 0 and 0 < p.utilisation <= 1 and p.hardware


def test_an_energy_claim_on_a_skewed_meter_clock_is_inconclusive(tmp_path):
    """A meter whose clock was found off and not corrected (quality clock-skew) cannot decide an
    energy claim, whatever the ratio says; a timing claim on the same cells is still judged."""
    from harness.cells import ResultCell
    from harness.records import CellRecord, EnergyRecord, MeterEnergy

    def cell(backend, tps, tpj, quality):
        rec = CellRecord(cell_id=f"{backend}/tiny/fp32/b1/p8/g4/offline", backend=backend, backend_type="torch",
                         model="tiny", dtype="fp32", batch=1, prompt_len=8, gen_len=4, scenario="offline",
                         status="ok", valid=True, device="cpu",
                         metrics={"decode_tps": {"samples": [tps * (1 + 0.01 * i) for i in range(5)], "median": tps},
                                  "e2e_s": {"samples": [0.1] * 5, "median": 0.1}},
                         accuracy={"passed": True, "rel_err": 1e-6},
                         energy=EnergyRecord(meters=[MeterEnergy(meter="wall", method="external", scope="wall",
                                                                 quality=quality, reason="log clock 2 s ahead",
                                                                 tokens_per_joule_gross=tpj)]))
        return ResultCell(run_id="r", run_dir=tmp_path, meta={}, record=rec)

    cells = [cell("npu", 1000.0, 100.0, "clock-skew"), cell("gpu", 10.0, 1.0, "ok")]
    wl = Workload(model="tiny", batch=1, prompt_len=8, gen_len=4)
    energy = evaluate(Claim("npu 10x tokens/J", "tokens_per_joule", Selector(backend="npu"), Selector(backend="gpu"),
                            wl, 10.0), cells)
    assert energy.verdict == "INCONCLUSIVE" and "clock is off" in energy.reason and "would be SUPPORTED" in energy.reason
    assert any("meter clock that is off (wall: log clock 2 s ahead)" in c for c in energy.caveats)
    speed = evaluate(Claim("npu 10x faster", "decode_tps", Selector(backend="npu"), Selector(backend="gpu"), wl, 10.0),
                     cells)
    assert speed.verdict == "SUPPORTED"


# --- issue 18: the baseline is matched to the subject's precision where it can be ---------

def test_an_int8_subject_is_compared_with_the_baselines_int8_cell(tmp_path):
    # the baseline's bf16 cell is 100 tok/s, its int8 cell 180: an int8 subject at 400 is 2.2x the
    # matched cell (so a 3x claim is refuted) but 4x the bf16 one (where it would be supported)
    cells = cells_of(tmp_path, [record(decode=400, precision="int8")],
                     [gpu(decode=100, precision="bf16"), gpu(decode=180, precision="int8", seed=2)])
    v = evaluate(claim(at_least=3), cells)
    assert v.comparison.baseline.precision == "int8"
    assert v.comparison.ratio.ratio == pytest.approx(400 / 180, rel=0.05)
    assert v.verdict == REFUTED
    assert any("matched to the subject's precision int8" in c and "bf16 set aside" in c for c in v.caveats)
    assert not any(c.startswith("precisions differ") for c in v.caveats)


def test_without_a_matching_cell_the_mismatch_is_named(tmp_path):
    cells = cells_of(tmp_path, [record(decode=400, precision="int8")], [gpu(decode=100, precision="bf16")])
    v = evaluate(claim(at_least=3), cells)
    assert v.comparison.baseline.precision == "bf16" and v.verdict == SUPPORTED
    assert any("precisions differ: subject int8, baseline bf16" in c for c in v.caveats)
    assert any("has no int8 cell to match" in c for c in v.caveats)


def test_a_baseline_pinned_to_a_precision_keeps_it(tmp_path):
    cells = cells_of(tmp_path, [record(decode=400, precision="int8")],
                     [gpu(decode=100, precision="bf16"), gpu(decode=180, precision="int8", seed=2)])
    v = evaluate(claim(at_least=3, baseline={"backend": "gpu", "precision": "bf16"}), cells)
    assert v.comparison.baseline.precision == "bf16" and v.verdict == SUPPORTED
    assert not any("matched to the subject's precision" in c or "to match" in c for c in v.caveats)


def test_a_cache_resident_baseline_is_not_sent_to_calibrate(tmp_path):
    """A calibrated baseline whose weights fit the last-level cache has no DRAM roofline: the
    caveat says cache-resident for that side, and still "unknown" for a side with no figure."""
    resident = {"basis": "calibration cuda:0 on h (decode: cache-resident ...)", "decode_cache_resident": True,
                "suspect": False}
    cells = cells_of(tmp_path, [record(decode=1000)], [gpu(decode=100, roofline=resident)])
    text = " | ".join(evaluate(claim(at_least=5), cells).caveats)
    assert "baseline decode is cache-resident (its weights fit the last-level cache, so no DRAM roofline " \
           "applies): cannot tell from a roofline whether the baseline is tuned" in text
    assert "roofline unknown" not in text
    text = " | ".join(evaluate(claim(metric="e2e_s", at_least=0.5), cells).caveats)  # decode and prefill
    assert "baseline decode is cache-resident" in text and "baseline prefill roofline unknown" in text
    assert "baseline decode and prefill" not in text
