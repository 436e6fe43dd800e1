"""Kills mutants of the ONNX fallback guard (backends/onnx_backend.py: summarize_placement and
fallback_refusal, issue 19): partial fallback is refused whatever its share, counts by hand."""
import pytest

from backends.onnx_backend import fallback_refusal, summarize_placement

CUDA, CPU, OV = "CUDAExecutionProvider", "CPUExecutionProvider", "OpenVINOExecutionProvider"


def test_partial_fallback_counts_and_refusal():
    nodes = [(CUDA, "MatMul"), (CUDA, "MatMul"), (CUDA, "Add"), (CPU, "MatMul"), (CPU, "Shape"),
             (CPU, "Softmax"), (OV, "Gemm"), (CPU, "Gather"), (CPU, "Shape")]
    p = summarize_placement(nodes, CUDA, "profile")
    assert p["method"] == "profile" and p["requested_provider"] == CUDA and p["nodes"] == 9
    assert p["nodes_per_provider"] == {CUDA: 3, CPU: 5, OV: 1}
    assert p["ops_per_provider"] == {CUDA: {"Add": 1, "MatMul": 2}, CPU: {"Gather": 1, "MatMul": 1, "Shape": 2,
                                                                          "Softmax": 1}, OV: {"Gemm": 1}}
    assert list(p["ops_per_provider"][CPU]) == ["Gather", "MatMul", "Shape", "Softmax"]  # sorted
    # compute: 2 MatMul on CUDA, 1 MatMul on CPU, 1 Gemm on OpenVINO -> 2 of 4 left CUDA
    assert p["compute_nodes"] == 4 and p["compute_nodes_off_requested"] == 2
    assert p["compute_share_off_requested"] == 0.5
    assert p["compute_ops_on_cpu"] == {"MatMul": 1}
    assert p["shape_ops_on_cpu"] == {"Shape": 2, "Gather": 1}
    assert p["other_ops_on_cpu"] == {"Softmax": 1}
    assert p["cpu_fallback"] == "compute"
    assert p["summary"] == "CPU: 5, CUDA: 3, OpenVINO: 1"
    why = fallback_refusal(p, allow_cpu_fallback=False)
    assert why == (f"{CUDA} left compute on the CPU (1 of 4 compute nodes: MatMul x1); a cell timed this way "
                   f"would credit the CPU's work to {CUDA}. Set allow_cpu_fallback: true in the backend's "
                   "options to time it anyway (results then show the split). Placement: CPU: 5, CUDA: 3, "
                   "OpenVINO: 1.")
    assert fallback_refusal(p, allow_cpu_fallback=True) is None


def test_one_matmul_of_many_is_enough_to_refuse():
    nodes = [(CUDA, "MatMul")] * 99 + [(CPU, "MatMul"), (CPU, "Attention"), (CPU, "Attention")]
    p = summarize_placement(nodes, CUDA, "assignment")
    assert p["compute_share_off_requested"] == pytest.approx(3 / 102)
    why = fallback_refusal(p, False)
    assert why is not None and "(3 of 102 compute nodes: Attention x2, MatMul x1)" in why


@pytest.mark.parametrize("cpu_ops,fallback", [
    ([], "none"), (["Shape", "Gather"], "shape-only"), (["Shape", "Softmax"], "other"),
    (["Shape", "Softmax", "Gemm"], "compute"),
])
def test_fallback_kind(cpu_ops, fallback):
    nodes = [(CUDA, "MatMul")] + [(CPU, op) for op in cpu_ops]
    p = summarize_placement(nodes, CUDA, "m")
    assert p["cpu_fallback"] == fallback
    assert (fallback_refusal(p, False) is None) is (fallback != "compute")


def test_cpu_requested_is_never_a_fallback():
    p = summarize_placement([(CPU, "MatMul"), (CPU, "Shape"), (CPU, "Softmax")], CPU, "m")
    assert p["cpu_fallback"] == "none"
    assert p["compute_ops_on_cpu"] == {} and p["shape_ops_on_cpu"] == {} and p["other_ops_on_cpu"] == {}
    assert p["compute_nodes_off_requested"] == 0 and p["compute_share_off_requested"] == 0.0
    assert fallback_refusal(p, False) is None


def test_no_compute_nodes_has_share_zero():
    p = summarize_placement([(CUDA, "Add"), (OV, "Mul")], CUDA, "m")
    assert p["compute_nodes"] == 0 and p["compute_share_off_requested"] == 0.0
    assert p["cpu_fallback"] == "none" and p["summary"] == "CUDA: 1, OpenVINO: 1"
    assert summarize_placement([], CUDA, "m")["nodes"] == 0


def test_fallback_refusal_counts_and_sorts_every_op():
    p = {"compute_ops_on_cpu": {"MatMul": 2, "Gemm": 3}, "requested_provider": "X", "compute_nodes": 7,
         "summary": "s"}
    assert fallback_refusal(p, False).startswith("X left compute on the CPU (5 of 7 compute nodes: Gemm x3, "
                                                 "MatMul x2); a cell timed this way would credit")
