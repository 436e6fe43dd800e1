"""Values that used to pass validation and crash later, after a half-made run folder
existed (issue 14, item 11), through the real CLI: `python -m harness run SUITE` in a
subprocess must exit 2 with `error: FILE:LINE: key: message`, print no traceback, and
create no run folder.

Each suite is written as text so that the line of the offending key is known here, not
computed by the loader under test.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
import re
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parent.parent

BACKEND_TORCH = "  - type: torch\n    options: {device: cpu}\n"
WORKLOAD = "workloads:\n  - model: tiny\n    batch_sizes: [1]\n    prompt_lens: [8]\n    gen_lens: [4]\n"


def suite_text(out: Path, backends: str = BACKEND_TORCH, extra: str = "", name: str = "late",
               workloads: str = WORKLOAD) -> str:
    return f"name: {name}\noutput: {out}\nbackends:\n{backends}{workloads}{extra}"


def run_cli(tmp_path: Path, text: str, inproc: bool = False) -> tuple[int, str, Path, Path]:
    """(exit status, stderr, suite path, output folder) of `harness run SUITE`: a real
    subprocess for each case the issue names; `inproc` runs the same main() in this
    process for further variants of a case (a subprocess costs 2-4 s on a loaded CI box)."""
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    out = tmp_path / "out"
    if inproc:
        import signal

        from harness.cli import main

        err = io.StringIO()
        old = signal.getsignal(signal.SIGTERM)
        try:
            with contextlib.redirect_stderr(err):
                rc = main(["run", str(path), "--quiet"])
        finally:
            signal.signal(signal.SIGTERM, old)
        return rc, err.getvalue(), path, out
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(path), "--quiet"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=env)
    return proc.returncode, proc.stderr, path, out


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing needle (the test's own count)."""
    return next(i for i, ln in enumerate(text.splitlines(), 1) if needle in ln)


def assert_rejected(tmp_path: Path, text: str, key: str, needle: str, message: str, inproc: bool = False) -> str:
    rc, err, path, out = run_cli(tmp_path, text, inproc)
    assert rc == 2, (rc, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    line = line_of(text, needle)
    # one problem: `error: FILE:LINE: key: ...`; several: `error: N problems:` then one per line
    assert err.startswith("error: "), err[-2000:]
    assert re.search(rf"^(error: )?{re.escape(str(path))}:{line}: {re.escape(key)}: ", err, re.M), err[-2000:]
    assert re.search(message, err), err[-2000:]
    assert not out.exists(), f"a run folder was made: {list(out.iterdir())}"
    return err


# --- device strings and thread counts ---------------------------------------------------------

def test_torch_device_200kb(tmp_path):
    dev = "x" * 200_000
    text = suite_text(tmp_path / "out", backends=f"  - type: torch\n    options: {{device: {dev}}}\n")
    err = assert_rejected(tmp_path, text, "backends[0].options.device", "device:", r"at most 4,096 characters")
    assert len(err) < 2000  # the value is not echoed back whole


@pytest.mark.parametrize("dev", ["cuda:abc", "CUDA", "cuda:0:1", "'cuda 0'", "gpu:0", "../cpu"])
def test_torch_device_syntax(tmp_path, dev):
    text = suite_text(tmp_path / "out", backends=f"  - type: torch\n    options: {{device: {dev}}}\n")
    assert_rejected(tmp_path, text, "backends[0].options.device", "device:", r"expected a device",
                    inproc=dev != "cuda:abc")


def test_llamacpp_device_label_and_threads(tmp_path):
    # optional: its options are still checked where llama-cpp-python is not installed
    backends = ("  - type: llama.cpp\n    optional: true\n    options:\n      device: 'a/b'\n"
                f"      threads: {2**63}\n")
    text = suite_text(tmp_path / "out", backends=BACKEND_TORCH + backends)
    err = assert_rejected(tmp_path, text, "backends[1].options.device", "device: 'a/b'", r"expected a device")
    assert re.search(rf":{line_of(text, 'threads:')}: backends\[1\]\.options\.threads: expected a value from 1 to "
                     r"4096", err), err


@pytest.mark.parametrize("key,value", [("intra_op_threads", 2**63), ("inter_op_threads", -1),
                                       ("intra_op_threads", 5000)])
def test_onnx_thread_counts(tmp_path, key, value):
    text = suite_text(tmp_path / "out", backends=f"  - type: onnxruntime\n    options:\n      {key}: {value}\n")
    assert_rejected(tmp_path, text, f"backends[0].options.{key}", f"{key}:", r"expected a value from 0 to 4096",
                    inproc=value != 2**63)


def test_onnx_model_path_not_a_file(tmp_path):
    text = suite_text(tmp_path / "out", backends=f"  - type: onnxruntime\n    options:\n      model_path: {tmp_path}\n")
    assert_rejected(tmp_path, text, "backends[0].options.model_path", "model_path:", r"is a directory")


# --- suite names and the number of cells -------------------------------------------------------

@pytest.mark.parametrize("name", ["'a b'", "'.hidden'", "'x/y'", "'" + "n" * 101 + "'", "'a..b'", "'é'"])
def test_suite_name_not_a_folder_name(tmp_path, name):
    text = suite_text(tmp_path / "out", name=name)
    assert_rejected(tmp_path, text, "name", "name:", r"names files and folders", inproc=name != "'a b'")


def test_million_cells_refused_with_the_count(tmp_path):
    # 100 x 100 x 100 = 1,000,000 cells; counted, not planned
    lens = ", ".join(str(i) for i in range(2, 102))
    workloads = (f"workloads:\n  - model: tiny\n    batch_sizes: [{lens}]\n    prompt_lens: [{lens}]\n"
                 f"    gen_lens: [{lens}]\n")
    text = suite_text(tmp_path / "out", workloads=workloads)
    assert_rejected(tmp_path, text, "workloads", "workloads:", r"plans 1,000,000 cells.*the limit is 100,000")


def test_cell_count_just_under_the_limit_is_planned(tmp_path):
    from harness.config import MAX_CELLS, load_plan

    # 2 backends x 50 x 50 x 20 = 100,000: at the limit, accepted and planned
    b = ", ".join(str(i) for i in range(1, 51))
    g = ", ".join(str(i) for i in range(2, 22))
    workloads = f"workloads:\n  - model: tiny\n    batch_sizes: [{b}]\n    prompt_lens: [{b}]\n    gen_lens: [{g}]\n"
    backends = BACKEND_TORCH + "  - type: torch\n    name: second\n    options: {device: cpu}\n"
    path = tmp_path / "s.yaml"
    path.write_text(suite_text(tmp_path / "out", backends=backends, workloads=workloads))
    assert len(load_plan(path).cells) == MAX_CELLS == 100_000


# --- scenario lengths files ---------------------------------------------------------------------

def lengths_suite(tmp_path: Path, path: str) -> str:
    extra = (f"scenario:\n  type: single-stream\n  requests: 2\n  lengths:\n    type: file\n    path: {path}\n")
    return suite_text(tmp_path / "out", extra=extra)


@pytest.mark.parametrize("content,message", [
    ('{"a": 1}', r'no "pairs" key'),
    ("null", r"got None"),
    ("3", r"got 3"),
    ("[]", r"non-empty"),
    ('[[1, "x"]]', r"entry 0: expected \[prompt_len, output_len\]"),
    ("[[1, 2], [3]]", r"entry 1:"),
    ("[[true, 2]]", r"entry 0:"),
    ("[[1.5, 2]]", r"entry 0:"),
    ("[[0, 2]]", r"entry 0:"),
    (f"[[1, {2**40}]]", r"entry 0:"),
    ('{"pairs": {"a": 1}}', r"got \{'a': 1\}"),
    ("[[1, 2]", r"not JSON"),
    ("[" * 100_000, r"not JSON|nested too deeply"),
])
def test_lengths_file_contents(tmp_path, content, message):
    f = tmp_path / "lengths.json"
    f.write_text(content)
    issue_cases = ('{"a": 1}', "null", "3", '[[1, "x"]]')  # a dict, null, a number, wrong-typed entries
    assert_rejected(tmp_path, lengths_suite(tmp_path, str(f)), "scenario.lengths.path", "path:", message,
                    inproc=content not in issue_cases)


def test_lengths_file_is_a_directory(tmp_path):
    d = tmp_path / "dir.json"
    d.mkdir()
    assert_rejected(tmp_path, lengths_suite(tmp_path, str(d)), "scenario.lengths.path", "path:", r"is a directory")


def test_lengths_file_missing(tmp_path):
    assert_rejected(tmp_path, lengths_suite(tmp_path, str(tmp_path / "nope.json")), "scenario.lengths.path",
                    "path:", r"not found")


def test_lengths_file_huge(tmp_path):
    from harness.scenarios.lengths import MAX_LENGTHS_FILE_BYTES

    f = tmp_path / "huge.json"
    with open(f, "wb") as fh:  # sparse: the size is what is checked, before any read
        fh.truncate(MAX_LENGTHS_FILE_BYTES + 1)
    assert_rejected(tmp_path, lengths_suite(tmp_path, str(f)), "scenario.lengths.path", "path:", r"too large")


def test_lengths_file_fifo(tmp_path):
    f = tmp_path / "fifo.json"
    os.mkfifo(f)
    assert_rejected(tmp_path, lengths_suite(tmp_path, str(f)), "scenario.lengths.path", "path:",
                    r"a device, pipe or socket")


def test_lengths_file_good_one_still_passes(tmp_path):
    from harness.config import load_plan

    f = tmp_path / "lengths.json"
    f.write_text(json.dumps({"pairs": [[3, 4], [5, 6]]}))
    path = tmp_path / "s.yaml"
    path.write_text(lengths_suite(tmp_path, str(f)))
    assert load_plan(path).scenario.config.lengths.path == str(f)


def test_fixed_lengths_bounded(tmp_path):
    extra = f"scenario:\n  type: single-stream\n  lengths: {{type: fixed, prompt_len: {2**40}, output_len: 4}}\n"
    assert_rejected(tmp_path, suite_text(tmp_path / "out", extra=extra), "scenario.lengths", "lengths:",
                    r"prompt_len must be an integer from 1 to 1048576")


# --- meters -------------------------------------------------------------------------------------

METER = "  - {type:"  # the meter's line (the tmp path holds the test's name: no key names as needles)


def meter_suite(tmp_path: Path, meter: str) -> str:
    return suite_text(tmp_path / "out", extra=f"meters:\n  - {meter}\n")


@pytest.mark.parametrize("value", ["1.0e+300", "-1.0e+300", "86401", ".inf", ".nan"])
def test_clock_offset_bounded(tmp_path, value):
    log = tmp_path / "log.csv"
    text = meter_suite(tmp_path, f"{{type: csv-log, path: {log}, clock_offset_s: {value}}}")
    assert_rejected(tmp_path, text, "meters[0].clock_offset_s", METER, r"expected a (value from -86400 to "
                    r"86400|number)", inproc=value != "1.0e+300")


@pytest.mark.parametrize("value", ["0", "-1", ".nan", ".inf", "1.0e+400"])
def test_csv_watts_scale_finite_positive(tmp_path, value):
    log = tmp_path / "log.csv"
    text = meter_suite(tmp_path, f"{{type: csv-log, path: {log}, watts_scale: {value}}}")
    assert_rejected(tmp_path, text, "meters[0].watts_scale", METER, r"expected a (value from|number)",
                    inproc=value not in ("0", ".inf"))


@pytest.mark.parametrize("value", ["0", "-2", ".inf", ".nan"])
def test_command_scale_finite_positive(tmp_path, value):
    text = meter_suite(tmp_path, f"{{type: command, argv: [echo, '1'], regex: '(\\d+)', scale: {value}}}")
    assert_rejected(tmp_path, text, "meters[0].scale", METER, r"scale", inproc=value != "0")


@pytest.mark.parametrize("key,value", [("settle_s", "1.0e+9"), ("period_s", "0"), ("max_gap_s", "-1")])
def test_log_meter_durations_bounded(tmp_path, key, value):
    text = meter_suite(tmp_path, f"{{type: ptdaemon-log, path: {tmp_path / 'p.log'}, {key}: {value}}}")
    assert_rejected(tmp_path, text, f"meters[0].{key}", METER, r"expected a value from", inproc=True)


def test_log_meter_path_a_fifo(tmp_path):
    fifo = tmp_path / "power.csv"
    os.mkfifo(fifo)
    text = meter_suite(tmp_path, f"{{type: csv-log, path: {fifo}}}")
    assert_rejected(tmp_path, text, "meters[0].path", METER, r"a device, pipe or socket, not a regular file")


def test_log_meter_header_without_the_column(tmp_path):
    log = tmp_path / "power.csv"
    log.write_text("# meter v2\ntime,power_w\n1700000000,100\n")
    text = meter_suite(tmp_path, f"{{type: csv-log, path: {log}, columns: {{timestamp: time, watts: watts}}}}")
    assert_rejected(tmp_path, text, "meters[0].columns", METER,
                    rf"{re.escape(str(log))} line 2: expected a header with a column 'watts'")


def test_checkpoint_config_a_fifo(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    os.mkfifo(ckpt / "config.json")
    workloads = f"workloads:\n  - model: tiny\n    checkpoint: {ckpt}\n    batch_sizes: [1]\n"
    assert_rejected(tmp_path, suite_text(tmp_path / "out", workloads=workloads), "workloads[0].checkpoint",
                    "checkpoint:", r"a device, pipe or socket, not a regular file", inproc=True)
