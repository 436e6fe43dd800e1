"""Calibration: read bandwidth measured for real, stored per host in the output and the user cache."""
import json
import subprocess
import sys

import torch

from harness.calibrate import calibration_path, last_level_cache_bytes, load_for, read_bandwidth, save, \
    user_cache_dir


def test_read_bandwidth_is_measured_by_a_read_only_kernel():
    got = read_bandwidth(torch.device("cpu"), 16 << 20, min_s=0.05, trials=3)
    assert got["read_kernel"] in ("matvec", "reduce")
    assert got["read_bytes"] == (16 << 20) // (4 * 4096) * 4096 * 4
    best = max(max(v) for v in got["read_trials_Bps"].values())
    assert got["read_bandwidth_Bps"] == best and best > 1e8  # any machine reads 100 MB/s
    assert 0 <= got["read_noise"] < 1


def test_saved_calibration_is_found_from_any_output_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cal = {"device": "cpu", "host": "labhost", "read_bandwidth_Bps": 3e10, "matmul_flops": {}}
    paths = save(cal, tmp_path / "results_a")
    assert paths == [calibration_path(tmp_path / "results_a", "cpu", "labhost"),
                     calibration_path(user_cache_dir(), "cpu", "labhost")]
    assert json.loads(paths[1].read_text()) == cal
    monkeypatch.setattr("platform.node", lambda: "labhost")
    # a run written to another folder still finds this host's calibration
    assert load_for(tmp_path / "elsewhere", "cpu") == cal
    # the output folder's own calibration wins over the cache's
    local = dict(cal, read_bandwidth_Bps=1e9)
    calibration_path(tmp_path / "elsewhere", "cpu", "labhost").parent.mkdir(parents=True)
    calibration_path(tmp_path / "elsewhere", "cpu", "labhost").write_text(json.dumps(local))
    assert load_for(tmp_path / "elsewhere", "cpu") == local
    # a corrupt file is skipped, not a crash
    calibration_path(tmp_path / "elsewhere", "cpu", "labhost").write_text("[1, 2")
    assert load_for(tmp_path / "elsewhere", "cpu") == cal


def test_last_level_cache_is_read_from_sysfs_when_present():
    llc = last_level_cache_bytes()
    assert llc is None or llc >= 64 << 10


def test_calibrate_command_prints_read_and_copy_bandwidth(tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-m", "harness", "calibrate", "--quick", "--output", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert "read bandwidth" in out.stdout and "copy bandwidth" in out.stdout and "noise margin" in out.stdout
    files = list((tmp_path / "r" / "calibration").glob("*.json")) + list((tmp_path / "cache").rglob("*.json"))
    assert len(files) == 2
    cal = json.loads(files[0].read_text())
    assert cal["read_bandwidth_Bps"] > 0 and cal["memory_bandwidth_Bps"] > 0
    assert "matmul int8: " in out.stdout and "TOP/s" in out.stdout and cal["matmul_flops"]["int8"] > 0


import pytest  # noqa: E402


@pytest.mark.parametrize("device,needle", [("npu", "not a torch device"), ("", "not a torch device"),
                                           ("meta", "cpu or cuda"), ("cuda:0", None)])
def test_a_bad_device_is_one_error_not_a_traceback(device, needle, tmp_path):
    from harness.cli import main

    if device == "cuda:0" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA: cuda:0 is a good device here")
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["calibrate", "--quick", "--device", device, "--output", str(tmp_path)])
    assert rc == 2 and err.getvalue().startswith(f"error: --device"), err.getvalue()
    assert needle is None or needle in err.getvalue()
    assert not (tmp_path / "calibration").exists()


def test_no_command_is_an_error_on_stderr(capsys):
    from harness.cli import main

    assert main([]) == 2
    out = capsys.readouterr()
    assert out.out == "" and "error: no command given" in out.err


def test_int8_peak_is_the_fastest_integer_kernel_reached():
    from harness.calibrate import int8_matmul_rate

    rate, kernel, notes = int8_matmul_rate(torch.device("cpu"), 256, min_s=0.05)
    # onnxruntime is installed here: its MLAS GEMM is one of the candidates, and any machine
    # multiplies 256^3 int8 faster than 10 MOP/s
    assert kernel in ("onnxruntime MatMulInteger", "torch._int_mm") and rate > 1e7 and notes == []


def test_int8_peak_without_onnxruntime_falls_back_to_torch_and_says_so(monkeypatch):
    from harness.calibrate import int8_matmul_rate

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    rate, kernel, notes = int8_matmul_rate(torch.device("cpu"), 64, min_s=0.01)
    assert kernel == "torch._int_mm" and rate > 0
    assert len(notes) == 1 and notes[0].startswith("int8 onnxruntime MatMulInteger failed: ModuleNotFoundError")


def test_int8_peak_with_no_kernel_is_none_with_the_reasons(monkeypatch):
    from harness.calibrate import int8_matmul_rate

    monkeypatch.setitem(sys.modules, "onnxruntime", None)

    def broken(a, b):
        raise RuntimeError("no int8 kernel for this device")
    monkeypatch.setattr(torch, "_int_mm", broken)
    assert int8_matmul_rate(torch.device("cpu"), 64, min_s=0.01) == (None, "", [
        "int8 torch._int_mm failed: no int8 kernel for this device",
        "int8 onnxruntime MatMulInteger failed: ModuleNotFoundError: import of onnxruntime halted; None in sys.modules"])


@pytest.mark.parametrize("capability,ok", [((8, 0), False), ((8, 6), False), ((8, 9), True), ((9, 0), True),
                                           ((10, 0), True)])
def test_fp8_is_measured_only_where_fp8_units_exist(capability, ok, monkeypatch):
    """The capability guard, checked without a GPU: Ada (8.9), Hopper (9.0) and later."""
    from harness.calibrate import fp8_supported

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    got, why = fp8_supported(torch.device("cuda"))
    assert got is ok
    assert why == ("" if ok else f"fp8 matmul: capability {capability[0]}.{capability[1]} is below 8.9")
    cpu_ok, cpu_why = fp8_supported(torch.device("cpu"))
    assert cpu_ok is False and "no FP8 units on a CPU" in cpu_why


def test_calibrate_records_the_int8_peak_and_why_no_fp8_on_cpu():
    from harness.calibrate import calibrate

    cal = calibrate("cpu", quick=True)
    assert cal["matmul_flops"]["int8"] > 0 and cal["matmul_kernels"]["int8"]
    assert "fp8" not in cal["matmul_flops"]
    assert any("no FP8 units on a CPU" in n for n in cal["notes"])


def test_the_fp8_rate_call_runs_where_torch_has_a_scaled_mm():
    """calibrate() asks FP8 only of CUDA capability 8.9+ (tested above); the call itself
    (e4m3 operands, the second column-major, per-tensor fp32 scales, bf16 out) is the one
    torch's CPU _scaled_mm also takes, so its form is checked here without a GPU."""
    from harness.calibrate import fp8_matmul_rate

    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip(f"torch {torch.__version__} has no float8_e4m3fn")
    try:
        rate = fp8_matmul_rate(torch.device("cpu"), 64, min_s=0.01)
    except (RuntimeError, NotImplementedError) as e:
        pytest.skip(f"this torch has no CPU _scaled_mm: {e}")
    assert rate > 0
