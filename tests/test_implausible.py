"""IMPLAUSIBLE verdicts (a claimed factor beyond the subject's physical bound), claims judged
before the hardware arrives, and measured cells that beat physics (SUSPECT)."""
import json
from pathlib import Path

from harness.bounds import BoundWorkload, bound
from harness.catalog import load_catalog
from harness.cells import load_cells
from harness.claims import ExternalFigure
from harness.report.document import to_markdown
from harness.report.run_report import build_report
from harness.verdicts import IMPLAUSIBLE, INCONCLUSIVE, REFUTED, SUPPORTED, evaluate, exit_code, verdicts_markdown
from tests.bound_cli_helper import run_cli
from tests.test_claims import claim, record, write_run
from workloads.zoo import ZOO

ROOT = Path(__file__).resolve().parent.parent
W = {"model": "llama-3.1-8b", "batch": 1, "prompt_len": 64, "gen_len": 32}


def rngd_bound():
    """RNGD at 8B bf16 b1 p64 g32, by hand: 1.5 TB/s over the weights read per step + KV."""
    dim, layers, kv_dim, ffn, vocab = 4096, 32, 1024, 14336, 128256
    params = vocab * dim * 2 + layers * (2 * dim * dim + 2 * dim * kv_dim + 3 * dim * ffn + 2 * dim) + dim
    step = (params - vocab * dim) * 2 + (64 + 16) * 2 * layers * kv_dim * 2
    return 1.5e12 / step


def cells(tmp_path, subject_decode, baseline_decode=30.0, subject_tpj=None, baseline_tpj=1.0):
    recs = [record(backend="npu", device="npu:0", decode=subject_decode, model="llama-3.1-8b", precision="bf16",
                   tpj=subject_tpj, decode_pct=None),
            record(backend="gpu", device="cuda:0", decode=baseline_decode, model="llama-3.1-8b", precision="bf16",
                   tpj=baseline_tpj, decode_pct=80.0)]
    return load_cells([write_run(tmp_path, "r", recs)])


def test_hand_bound_agrees_with_the_model():
    b = bound(load_catalog().get("rngd"), BoundWorkload(ZOO["llama-3.1-8b"], "bf16", 1, 64, 32))
    assert abs(b.decode.tps / rngd_bound() - 1) < 1e-9


def test_claim_inside_the_bound_is_judged_by_the_measurements(tmp_path):
    cs = cells(tmp_path, subject_decode=90.0)  # below RNGD's ~100 tok/s bound; 3x the baseline
    v = evaluate(claim(subject={"backend": "npu", "catalog": "rngd"}, workload=W, at_least=2.0), cs)
    assert v.verdict == SUPPORTED
    assert v.bound is not None and v.bound.allowed > 2.0
    v = evaluate(claim(subject={"backend": "npu", "catalog": "rngd"}, workload=W, at_least=3.2), cs)
    assert v.verdict == REFUTED  # inside the bound (~3.3x), beyond the measurement (3x)


def test_claim_beyond_the_bound_is_implausible_with_the_deciding_numbers(tmp_path):
    cs = cells(tmp_path, subject_decode=90.0)
    v = evaluate(claim(subject={"backend": "npu", "catalog": "rngd"}, workload=W, at_least=5.0), cs)
    assert v.verdict == IMPLAUSIBLE
    allowed = rngd_bound() / v.comparison.baseline_value.summary().ci_low
    assert abs(v.bound.allowed / allowed - 1) < 1e-9 and allowed < 5
    assert "measurements alone would give REFUTED" in v.caveats[0]
    assert "rngd" in v.bound.subject and "1500 GB/s" in " ".join(v.bound.constants)
    assert exit_code([v]) == 1


def test_cell_above_its_bound_is_suspect_and_cannot_support(tmp_path):
    cs = cells(tmp_path, subject_decode=1.3 * rngd_bound(), baseline_decode=40.0)  # 3.2x measured
    v = evaluate(claim(subject={"backend": "npu", "catalog": "rngd"}, workload=W, at_least=1.2), cs)
    assert v.verdict == INCONCLUSIVE
    assert "above the physical bound of rngd" in v.reason and "SUSPECT" in v.reason


def test_cell_below_its_energy_floor_is_suspect_and_cannot_support(tmp_path):
    # RNGD's floor at 8B bf16 batch 1 is ~0.8 J/token (15 GB x 3.59 pJ/bit + idle); 0.01 J/token is not physics
    cs = cells(tmp_path, subject_decode=50.0, subject_tpj=100.0, baseline_tpj=0.2)  # 5 J/token: 2x is possible
    v = evaluate(claim(metric="j_per_token", subject={"backend": "npu", "catalog": "rngd"}, workload=W,
                       at_least=2.0), cs)
    assert v.verdict == INCONCLUSIVE
    assert "below the floor of rngd" in v.reason and "SUSPECT" in v.reason
    assert v.bound.allowed > 2.0  # so it is the measurement, not the claim, that fails physics


def test_seed_claims_before_the_hardware_arrives(tmp_path, capsys):
    md = tmp_path / "v.md"
    assert run_cli(["verify", str(ROOT / "workloads" / "claims.pim.yaml"), "--markdown", str(md)]) == 1
    text = md.read_text()
    # batch 1: 2.93 J against pim-bank's floor of 15 GB x 8 x 0.55 pJ/bit + 7.5 G MAC x 0.32 pJ ~ 68.6 mJ
    weights = (8_030_261_248 - 128256 * 4096) * 2
    kv = (128 + 64) * 2 * 32 * 1024 * 2
    macs = 32 * (2 * 4096 ** 2 + 2 * 4096 * 1024 + 3 * 4096 * 14336) + 128256 * 4096 + 2 * 32 * 4096 * 192
    floor_b1 = (weights + kv) * 8 * 0.55e-12 + macs * 0.32e-12
    assert f"{2.93 / floor_b1:.3g}x" in text
    floor_best = kv * 8 * 0.55e-12 + macs * 0.32e-12
    assert f"{0.087 / floor_best:.3g}x" in text
    assert text.count("- Verdict: **IMPLAUSIBLE**") == 4 and "**INCONCLUSIVE**" in text
    assert "MEASURED OUTSIDE THE PROJECT" in text and "rests on the catalog only" in text


def test_measured_subject_against_an_external_baseline(tmp_path):
    """A measured NPU against a figure measured outside the project: judged by the subject's
    interval against that one figure, labelled as external, with the bound on top."""
    cs = cells(tmp_path, subject_decode=90.0)
    ext = [ExternalFigure(name="gpu-paper", device="h100-sxm", model="llama-3.1-8b", precision="bf16", batch=1,
                          source="a paper", decode_tps=30.0)]
    c = claim(subject={"backend": "npu", "catalog": "rngd"}, baseline={"external": "gpu-paper"}, workload=W,
              at_least=2.0)
    c.external = ext
    v = evaluate(c, cs)
    assert v.verdict == SUPPORTED and abs(v.comparison.ratio.ratio / 3.0 - 1) < 0.05
    assert any("MEASURED OUTSIDE THE PROJECT" in x for x in v.caveats)
    c.at_least = 5.0  # beyond rngd's ~100 tok/s bound against 30 tok/s
    assert evaluate(c, cs).verdict == IMPLAUSIBLE


def test_report_shows_cells_as_a_percentage_of_their_bound(tmp_path):
    recs = [record(backend="gpu", device="cuda:0", decode=100.0, model="llama-3.1-8b", precision="bf16",
                   tpj=1 / 2.93),
            record(backend="gpu", device="cuda:0", batch=64, decode=900.0, model="llama-3.1-8b", precision="bf16",
                   tpj=1 / 0.001)]  # 1 mJ/token at batch 64: below the H100's floor
    run = write_run(tmp_path, "r", recs)
    meta = json.loads((run / "run.json").read_text())
    meta["inventory"]["gpus"] = [{"index": 0, "name": "NVIDIA H100 80GB HBM3"}]
    (run / "run.json").write_text(json.dumps(meta))
    md = to_markdown(build_report([run], with_plots=False))
    section = md[md.index("## Physical bounds"):]
    b1 = bound(load_catalog().get("h100-sxm"), BoundWorkload(ZOO["llama-3.1-8b"], "bf16", 1, 64, 32))
    row = next(line for line in section.splitlines() if "b1 p64" in line)
    assert f"| {100 * 100 / b1.decode.tps:.0f} % |" in row.replace(" SUSPECT", "")
    assert "SUSPECT" not in row
    row64 = next(line for line in section.splitlines() if "b64 p64" in line)
    assert row64.endswith("% SUSPECT |")


def test_cache_resident_cell_is_not_held_to_the_off_chip_bound(tmp_path):
    roof = {"decode_cache_resident": True, "basis": "test"}
    recs = [record(backend="npu", device="npu:0", decode=1.3 * rngd_bound(), model="llama-3.1-8b",
                   precision="bf16", roofline=roof),
            record(backend="gpu", device="cuda:0", decode=40.0, model="llama-3.1-8b", precision="bf16")]
    v = evaluate(claim(subject={"backend": "npu", "catalog": "rngd"}, workload=W, at_least=1.2),
                 load_cells([write_run(tmp_path, "r", recs)]))
    assert "physical bound" not in (v.blocked or "")


def test_external_baseline_is_shown_as_such_not_as_a_cell(tmp_path):
    cs = cells(tmp_path, subject_decode=90.0)
    c = claim(subject={"backend": "npu", "catalog": "rngd"}, baseline={"external": "gpu-paper"}, workload=W,
              at_least=2.0)
    c.external = [ExternalFigure(name="gpu-paper", device="h100-sxm", model="llama-3.1-8b", precision="bf16",
                                 batch=1, source="a paper", decode_tps=30.0)]
    md = verdicts_markdown([evaluate(c, cs)])
    baseline = next(line for line in md.splitlines() if line.startswith("- Baseline:"))
    assert "MEASURED OUTSIDE THE PROJECT: a paper" in baseline and "npu" not in baseline
