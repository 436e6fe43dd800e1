"""The bound model (harness.bounds) against arithmetic done by hand, and `harness bound`."""
from pathlib import Path

import pytest

from harness.bounds import BoundWorkload, bound, best_batch
from harness.catalog import load_catalog
from tests.bound_cli_helper import run_cli
from workloads.zoo import ZOO

DEVICE = """\
devices:
  - name: toy
    label: a toy accelerator
    kind: npu
    memory:
      kind: HBM
      capacity_gb: {value: 1, source: "test"}
      bandwidth_gb_s: {value: 100, source: "test"}
      pj_per_bit: {value: 1.0, source: "test"}
    peak_tflops: {fp32: {value: 1, source: "test"}}
    mac_pj: {value: 0.5, source: "test"}
    idle_w: {value: 10, source: "test"}
  - name: toy-no-energy
    label: the same without energy constants
    kind: npu
    memory:
      kind: HBM
      bandwidth_gb_s: {value: 100, source: "test"}
"""


def tiny_by_hand(batch, prompt, gen):
    """The zoo's `tiny` (vocab 2048, dim 256, 4 layers, 8 heads, 4 KV heads, ffn 512, tied
    embeddings), fp32, counted by hand."""
    dim, layers, kv_dim, ffn, vocab = 256, 4, 4 * (256 // 8), 512, 2048
    attn = dim * dim + 2 * dim * kv_dim + dim * dim  # q, k, v, o
    per_layer = attn + 3 * dim * ffn + 2 * dim  # + mlp + 2 norms
    params = vocab * dim + layers * per_layer + dim  # tied head, final norm
    assert params == 2_885_888
    context = prompt + gen / 2
    weight_bytes = params * 4 / batch  # tied: the table is the head, read every step
    kv_bytes = context * 2 * layers * kv_dim * 4
    macs = layers * (attn + 3 * dim * ffn) + vocab * dim + 2 * layers * dim * context
    return weight_bytes + kv_bytes, macs


@pytest.fixture
def catalog(tmp_path):
    (tmp_path / "toy.yaml").write_text(DEVICE)
    return load_catalog([tmp_path], shipped=False)


def test_decode_bound_and_floor_by_hand(catalog):
    bytes_tok, macs = tiny_by_hand(2, 8, 4)
    assert bytes_tok == 11_543_552 / 2 + 10 * 4096
    b = bound(catalog.get("toy"), BoundWorkload(ZOO["tiny"], "fp32", 2, 8, 4))
    assert b.decode.work.bytes == pytest.approx(bytes_tok)
    assert b.decode.work.macs == pytest.approx(macs)
    mem_tps, cmp_tps = 100e9 / bytes_tok, 1e12 / (2 * macs)
    assert mem_tps < cmp_tps
    assert b.decode.tps == pytest.approx(mem_tps) and b.decode.limit == "memory"
    terms = {t.name: t.joules for t in b.decode.terms}
    assert terms["memory"] == pytest.approx(bytes_tok * 8 * 1e-12)
    assert terms["mac"] == pytest.approx(macs * 0.5e-12)
    assert terms["idle"] == pytest.approx(10 / mem_tps)
    assert b.decode.floor_j == pytest.approx(bytes_tok * 8e-12 + macs * 0.5e-12 + 10 / mem_tps)
    assert b.fits is True


def test_unpublished_constants_are_left_out_not_guessed(catalog):
    w = BoundWorkload(ZOO["tiny"], "fp32", 1, 8, 4)
    full, bare = bound(catalog.get("toy"), w), bound(catalog.get("toy-no-energy"), w)
    assert bare.decode.missing == ["memory", "mac", "idle"] and bare.decode.floor_j == 0
    assert bare.decode.tps == pytest.approx(full.decode.tps)  # bandwidth is known for both
    assert full.decode.missing == []


def test_best_batch_fills_memory_and_large_batch_limit_has_no_weight_share(catalog):
    toy = catalog.get("toy")
    b = best_batch(toy, ZOO["tiny"], "fp32", 8, 4)
    kv_seq = 12 * 4096
    assert b == int((1e9 - 2_885_888 * 4) // kv_seq)
    assert best_batch(catalog.get("toy-no-energy"), ZOO["tiny"], "fp32", 8, 4) is None
    inf = bound(toy, BoundWorkload(ZOO["tiny"], "fp32", None, 8, 4))
    assert inf.decode.work.weight_bytes == 0 and inf.decode.work.kv_bytes == 10 * 4096


def test_shipped_h100_batch1_floor_matches_the_issue_arithmetic():
    """Issue 16: 8B at bf16 reads ~15 GB per step; 3.59 pJ/bit gives ~0.43 J before MACs."""
    h100 = load_catalog().get("h100-sxm")
    b = bound(h100, BoundWorkload(ZOO["llama-3.1-8b"], "bf16", 1, 128, 128))
    terms = {t.name: t.joules for t in b.decode.terms}
    assert 0.42 < terms["memory"] < 0.44
    assert 2.3e-3 < terms["mac"] < 2.6e-3  # ~7.5 G MAC x 0.32 pJ
    assert 215 < b.decode.tps < 230  # 3.35 TB/s / 15 GB


def test_harness_bound_prints_table_and_markdown(tmp_path, catalog, capsys):
    md = tmp_path / "b.md"
    assert run_cli(["bound", "--devices", str(tmp_path), "--only", "toy,toy-no-energy", "--models", "tiny",
                    "--batch", "2", "--prompt", "8", "--gen", "4", "--precision", "fp32", "--markdown", str(md)]) == 0
    bytes_tok, macs = tiny_by_hand(2, 8, 4)
    tps = 100e9 / bytes_tok
    text = md.read_text()
    row = next(line for line in text.splitlines() if "| toy |" in line)
    assert f"{tps:,.0f}" in row
    floor_uj = (bytes_tok * 8e-12 + macs * 0.5e-12 + 10 / tps) * 1e6
    assert f"{floor_uj:.3g} uJ" in row
    assert "toy" in capsys.readouterr().out


@pytest.mark.parametrize("argv, msg", [
    (["bound", "--models", "nope"], "--models nope"),
    (["bound", "--batch", "0"], "--batch 0"),
    (["bound", "--precision", "fp64"], "--precision fp64"),
])
def test_harness_bound_bad_options_exit_2(argv, msg, capsys):
    assert run_cli(argv) == 2
    assert msg in capsys.readouterr().err


def test_model_in_on_chip_memory_has_no_off_chip_bound_or_term(tmp_path):
    (tmp_path / "sram.yaml").write_text(DEVICE.replace(
        '      pj_per_bit: {value: 1.0, source: "test"}\n',
        '      pj_per_bit: {value: 1.0, source: "test"}\n      on_chip_mib: {value: 64, source: "test"}\n', 1))
    cat = load_catalog([tmp_path], shipped=False)
    _, macs = tiny_by_hand(2, 8, 4)
    b = bound(cat.get("toy"), BoundWorkload(ZOO["tiny"], "fp32", 2, 8, 4))  # 11.5 MB of weights < 64 MiB
    assert b.on_chip is True and b.decode.limit == "compute"
    assert b.decode.tps == pytest.approx(1e12 / (2 * macs))
    assert {t.name: t.joules for t in b.decode.terms}["memory"] == 0
    big = bound(cat.get("toy"), BoundWorkload(ZOO["smollm2-135m"], "fp32", 1, 8, 4))  # 538 MB: off chip
    assert big.on_chip is False and big.decode.limit == "memory"
