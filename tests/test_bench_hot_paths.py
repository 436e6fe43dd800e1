"""pytest-benchmark timings of hot paths, kept per commit by CI (no speed assertions here:
targets live in `harness run` benchmarks)."""
import numpy as np
import pytest

from backends.torch_backend import TorchBackend, TorchOptions
from harness.records import CellRecord
from harness.results import append_record, read_records
from workloads.zoo import ZOO, ModelSpec


@pytest.fixture(scope="module")
def tiny_backend():
    b = TorchBackend(TorchOptions(device="cpu", threads=1))
    b.load(ModelSpec(ZOO["tiny"]), "fp32", 1, 80)
    b.prepare(1, 80)
    yield b
    b.close()


def test_decode_step_tiny(benchmark, tiny_backend):
    prompts = np.zeros((1, 16), dtype=np.int64)
    # decode advances its state: each round starts from a fresh prefill (not timed)
    result = benchmark.pedantic(tiny_backend.decode, setup=lambda: ((tiny_backend.prefill(prompts), 8), {}),
                                rounds=10, iterations=1)
    assert result.tokens.shape == (1, 8)


def test_result_writing(benchmark, tmp_path):
    record = CellRecord(cell_id="x", backend="b", backend_type="torch", model="tiny", dtype="fp32", batch=1,
                        prompt_len=16, gen_len=8, scenario="offline", status="ok", valid=True,
                        metrics={"decode_tps": {"samples": list(range(100))}}, samples={"e2e_s": [0.1] * 100})
    path = tmp_path / "results.jsonl"
    benchmark(append_record, path, record)
    assert read_records(path)[0] == record
