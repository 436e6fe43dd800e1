"""`harness import` of aiperf's profile_export.jsonl and guidellm's benchmarks JSON.

The exports are written here in each tool's documented format (harness/importers/aiperf.py
and guidellm.py cite the schemas) from one table of synthetic requests: a closed loop of
4 streams whose every request has a known start, TTFT, chunk gaps and token counts. Both
tools' files describe the same requests under their own metric names, so after import
`harness compare` must find them equal, and the figures must equal what this file
computes from the table with the harness's definitions.
"""
from __future__ import annotations

import argparse
import json
import statistics
from unittest import mock

import pytest

from harness.importers import add_import_command

T0_NS = 1_796_000_000_000_000_000  # request times in unix nanoseconds
STREAMS = 4
PER_STREAM = 6


def _requests():
    """(start_s, ttft_s, [gap_s...], prompt tokens): a closed loop of STREAMS streams."""
    out = []
    for s in range(STREAMS):
        t = s * 0.003
        for k in range(PER_STREAM):
            i = s * PER_STREAM + k
            ttft = 0.020 + 0.002 * ((i * 7) % 5)
            gaps = [0.010 + 0.001 * ((i + j) % 3) for j in range(15 + (i % 4))]
            out.append((t, ttft, gaps, 60 + (i % 9)))
            t += ttft + sum(gaps) + 0.0005
    return out


REQS = _requests()
# the failed request: stream 0's next one, after its last success (a closed loop of 4 never has 5 in flight)
ERR_START = REQS[PER_STREAM - 1][0] + REQS[PER_STREAM - 1][1] + sum(REQS[PER_STREAM - 1][2]) + 0.0005


def _aiperf(reqs=REQS, extra=()) -> str:
    lines = []
    # a warm-up record first: aiperf marks it, the import must skip it
    for n, (start, ttft, gaps, isl) in enumerate(reqs):
        osl = len(gaps) + 1
        lat = ttft + sum(gaps)
        start_ns = T0_NS + round(start * 1e9)
        lines.append({
            "metadata": {"session_num": n, "x_request_id": f"7609a2e7-{n:04d}", "x_correlation_id": f"32ee-{n}",
                         "conversation_id": f"77aa-{n}", "turn_index": 0, "request_start_ns": start_ns,
                         "request_ack_ns": start_ns + 1_000_000, "request_end_ns": start_ns + round(lat * 1e9),
                         "worker_id": "worker_359d423a", "record_processor_id": "record_processor_1fa47cd7",
                         "benchmark_phase": "profiling", "was_cancelled": False, "cancellation_time_ns": None},
            "metrics": {"input_sequence_length": {"value": isl, "unit": "tokens"},
                        "time_to_first_token": {"value": ttft * 1e3, "unit": "ms"},
                        "request_latency": {"value": lat * 1e3, "unit": "ms"},
                        "output_token_count": {"value": osl, "unit": "tokens"},
                        "inter_chunk_latency": {"value": [g * 1e3 for g in gaps], "unit": "ms"},
                        "output_sequence_length": {"value": osl, "unit": "tokens"},
                        "inter_token_latency": {"value": (lat - ttft) / (osl - 1) * 1e3, "unit": "ms"},
                        "output_token_throughput_per_user": {"value": (osl - 1) / (lat - ttft),
                                                             "unit": "tokens/sec/user"}},
            "error": None})
    lines.insert(0, dict(lines[0], metadata=dict(lines[0]["metadata"], benchmark_phase="warmup",
                                                 x_request_id="warmup-0")))
    lines.append({"metadata": {"session_num": 999, "x_request_id": "c35e4b1b",
                               "request_start_ns": T0_NS + round(ERR_START * 1e9),
                               "request_ack_ns": None, "request_end_ns": T0_NS + round(ERR_START * 1e9) + 600_000,
                               "benchmark_phase": "profiling", "was_cancelled": True,
                               "cancellation_time_ns": T0_NS + round(ERR_START * 1e9) + 600_000},
                  "metrics": {"error_isl": {"value": 550, "unit": "tokens"}},
                  "error": {"code": 499, "type": "RequestCancellationError",
                            "message": "Request was cancelled after 0.000 seconds"}})
    lines.extend(extra)
    return "".join(json.dumps(x) + "\n" for x in lines)


def _guidellm(reqs=REQS, strategy=None) -> str:
    successful = []
    for n, (start, ttft, gaps, isl) in enumerate(reqs):
        osl = len(gaps) + 1
        lat = ttft + sum(gaps)
        t_start = T0_NS / 1e9 + start
        successful.append({
            "type_": "generative_request_stats", "request_id": f"req-{n}", "response_id": f"cmpl-{n}",
            "request_args": None, "output": "lorem " * osl,
            "info": {"request_id": f"req-{n}", "status": "completed", "error": None,
                     "timings": {"request_start": t_start, "first_token_iteration": t_start + ttft,
                                 "last_token_iteration": t_start + lat, "request_end": t_start + lat,
                                 "request_iterations": 1, "token_iterations": osl}},
            "input_metrics": {"text_tokens": isl, "total_tokens": isl},
            "output_metrics": {"text_tokens": osl, "total_tokens": osl},
            "request_start_time": t_start, "request_end_time": t_start + lat, "request_latency": lat,
            "prompt_tokens": isl, "output_tokens": osl, "total_tokens": isl + osl,
            "time_to_first_token_ms": ttft * 1e3,
            "time_per_output_token_ms": lat * 1e3 / osl,  # guidellm's: includes the first token
            "inter_token_latency_ms": (lat - ttft) * 1e3 / (osl - 1),
            "tokens_per_second": (isl + osl) / lat, "output_tokens_per_second": osl / lat})
    errored = [{"type_": "generative_request_stats", "request_id": "req-err",
                "info": {"request_id": "req-err", "status": "errored",
                         "error": "HTTPStatusError: Server error '500 Internal Server Error'\nTraceback ..."},
                "input_metrics": {}, "output_metrics": {}, "request_start_time": T0_NS / 1e9 + ERR_START,
                "request_end_time": T0_NS / 1e9 + ERR_START + 0.0006, "request_latency": 0.0006, "prompt_tokens": None,
                "output_tokens": None, "time_to_first_token_ms": None, "inter_token_latency_ms": None}]
    bench = {"type_": "generative_benchmark",
             "config": {"id_": "b0", "run_id": "r0", "run_index": 0,
                        "strategy": strategy or {"type_": "concurrent", "streams": STREAMS},
                        "constraints": {"max_requests": {"max_num": len(reqs)}}},
             "scheduler_metrics": {"start_time": T0_NS / 1e9, "end_time": T0_NS / 1e9 + 5},
             "metrics": {"request_latency": {"successful": {"mean": 0.2}}},
             "requests": {"successful": successful, "incomplete": [dict(successful[0], request_id="cut")],
                          "errored": errored}}
    doc = {"metadata": {"version": 2, "guidellm_version": "0.6.0", "python_version": "3.12.3",
                        "platform": "Linux"},
           "config": {"profile": {"type_": "concurrent", "streams": [STREAMS]}}, "benchmarks": [bench]}
    return json.dumps(doc, indent=2)


def harness(argv: list[str]) -> int:
    """`harness ARGV` through the real CLI entry, with `import` registered as the one line in
    harness/cli.py _parser will do (the lead adds it; this is a no-op once it is there)."""
    from harness import cli

    real = cli._parser

    def parser():
        p = real()
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        if "import" not in sub.choices:
            add_import_command(sub)
        return p

    with mock.patch.object(cli, "_parser", parser):
        return cli.main(argv)


def _expected():
    ttft = [t for _, t, _, _ in REQS]
    tpot = [sum(g) / len(g) for _, _, g, _ in REQS]  # (last - first token) / (output tokens - 1)
    e2e = [t + sum(g) for _, t, g, _ in REQS]
    span = max([s + t + sum(g) for s, t, g, _ in REQS] + [ERR_START + 0.0006]) - min(s for s, _, _, _ in REQS)
    out_tokens = sum(len(g) + 1 for _, _, g, _ in REQS)
    return {"ttft": statistics.median(ttft), "tpot": statistics.median(tpot), "e2e": statistics.median(e2e),
            "rps": len(REQS) / span, "tps": out_tokens / span,
            "itl": statistics.median([x for _, _, g, _ in REQS for x in g]),
            "prompt_len": round(statistics.median([isl for *_, isl in REQS])),
            "gen_len": round(statistics.median([len(g) + 1 for _, _, g, _ in REQS]))}


@pytest.fixture
def exports(tmp_path):
    a = tmp_path / "artifacts" / "profile_export.jsonl"
    a.parent.mkdir()
    a.write_text(_aiperf())
    g = tmp_path / "benchmarks.json"
    g.write_text(_guidellm())
    return a, g


def test_import_both_then_report_and_compare_show_them(exports, tmp_path, capsys):
    from harness.results import load_run

    a, g = exports
    out = tmp_path / "results"
    labels = ["--model", "llama-3.1-8b", "--dtype", "bf16", "--output", str(out)]
    assert harness(["import", str(a), "--name", "aiperf-run", *labels]) == 0
    assert harness(["import", str(g), "--name", "guidellm-run", *labels]) == 0
    assert "imported 1 cell(s) measured by guidellm" in capsys.readouterr().out

    exp = _expected()
    (ra,) = load_run(out / "aiperf-run")[1]
    (rg,) = load_run(out / "guidellm-run")[1]
    for r, tool in ((ra, "aiperf"), (rg, "guidellm")):
        assert r.backend_type == f"imported:{tool}" and r.sut["measured_by"] == tool and r.backend == tool
        assert r.cell_id == f"{tool}/llama-3.1-8b/bf16/b4/p{exp['prompt_len']}/g{exp['gen_len']}/concurrency"
        m = r.metrics
        assert (m["requests"], m["ok"], m["failed"]) == (len(REQS) + 1, len(REQS), 1)
        assert m["ttft_s"]["p50"] == pytest.approx(exp["ttft"], rel=1e-9)
        assert m["tpot_s"]["p50"] == pytest.approx(exp["tpot"], rel=1e-9)
        assert m["e2e_s"]["p50"] == pytest.approx(exp["e2e"], rel=1e-9)
        assert m["requests_per_s"] == pytest.approx(exp["rps"], rel=1e-6)
        assert m["output_tokens_per_s"] == pytest.approx(exp["tps"], rel=1e-6)
        assert "measured by " + tool in r.warnings[0]
    # aiperf keeps every chunk gap (our ITL); guidellm keeps none
    assert ra.metrics["itl_s"]["p50"] == pytest.approx(exp["itl"], rel=1e-9) and rg.metrics["itl_s"] is None
    assert ra.metrics["errors"] == {"RequestCancellationError": 1} and rg.metrics["errors"] == {"HTTPStatusError": 1}
    # guidellm's time_per_output_token_ms (first token included) is not what TPOT means
    g_tpot = statistics.median([(t + sum(gg)) / (len(gg) + 1) for _, t, gg, _ in REQS])
    assert g_tpot > 1.05 * exp["tpot"]  # so reading that field would have failed the check above
    assert rg.sut["tool_labels"]["incomplete_requests"] == 1 and rg.sut["tool_version"] == "0.6.0"
    assert len(ra.sut["source_sha256"]) == 64

    report = tmp_path / "report"
    assert harness(["report", str(out / "aiperf-run"), str(out / "guidellm-run"), "--out", str(report)]) == 0
    md = (report / "report.md").read_text()
    assert "imported from aiperf" in md and "imported from guidellm" in md
    assert "aiperf-run" in md and "guidellm-run" in md

    cmp_md = tmp_path / "compare.md"
    assert harness(["compare", str(out / "aiperf-run"), str(out / "guidellm-run"), "--markdown", str(cmp_md)]) == 0
    text = cmp_md.read_text()
    ttft_row = next(ln for ln in text.splitlines() if "time to first token" in ln or "ttft_s" in ln)
    tpot_row = next(ln for ln in text.splitlines() if "time per output token" in ln or "tpot_s" in ln)
    # the same requests under two tools' names: ratio 1 (float rounding of ms -> s aside)
    assert "| 1x [" in ttft_row and "| 1x [" in tpot_row, text


def test_server_label_and_batch_from_the_export(tmp_path):
    from harness.importers import import_file
    from harness.importers.common import Labels
    from harness.results import load_run

    g = tmp_path / "b.json"
    g.write_text(_guidellm(strategy={"type_": "poisson", "rate": 2.5, "max_concurrency": None}))
    (r,) = load_run(import_file(g, tmp_path / "res", name="g", labels=Labels(model="m", dtype="bf16")))[1]
    assert r.scenario == "server@2.5" and r.batch == 4  # peak requests in flight: the 4 streams of the table
    a = tmp_path / "p.jsonl"
    a.write_text(_aiperf())
    (r,) = load_run(import_file(a, tmp_path / "res", name="a", rate=2.5, labels=Labels(batch=16)))[1]
    assert r.scenario == "server@2.5" and r.batch == 16 and r.model == "unknown"


def _line_of(text: str, needle: str) -> int:
    return next(i for i, ln in enumerate(text.splitlines(), 1) if needle in ln)


def test_bad_exports_exit_2_with_file_line_and_key(tmp_path, capsys):
    def run(name: str, text: str, *extra: str) -> str:
        f = tmp_path / name
        f.write_text(text)
        assert harness(["import", str(f), "--output", str(tmp_path / "r"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err
        return err.strip()

    lines = _aiperf().splitlines()
    bad = json.loads(lines[3])
    bad["metrics"]["time_to_first_token"]["value"] = "fast"
    lines[3] = json.dumps(bad)
    err = run("p1.jsonl", "\n".join(lines) + "\n")
    assert f"p1.jsonl:4: metrics.time_to_first_token.value: expected a number, got a string" in err

    lines = _aiperf().splitlines()
    lines[1] = lines[1][:40]
    assert "p2.jsonl:2: not JSON" in run("p2.jsonl", "\n".join(lines) + "\n")

    lines = _aiperf().splitlines()
    bad = json.loads(lines[2])
    bad["metrics"]["request_latency"]["unit"] = "fortnights"
    lines[2] = json.dumps(bad)
    assert "p3.jsonl:3: metrics.request_latency.unit: expected a time unit (ns, us, ms, sec, s), got 'fortnights'" \
        in run("p3.jsonl", "\n".join(lines) + "\n")

    text = _guidellm().replace('"request_latency": 0.', '"request_latency": "0.', 1)
    i = text.index('"request_latency": "0.')
    end = text.index(",", i)
    text = text[:end] + '"' + text[end:]  # close the string: a latency given as text
    line = _line_of(text, '"request_latency": "0.')
    err = run("g1.json", text)
    assert f"g1.json:{line}: benchmarks[0].requests.successful[0].request_latency: expected a number, got a string" \
        in err, err

    text = _guidellm(strategy={"type_": "sweep"})
    err = run("g2.json", text)
    line = _line_of(text, '"type_": "sweep"')
    assert f"g2.json:{line}: benchmarks[0].config.strategy.type_: expected one of synchronous, concurrent" in err, err

    text = _guidellm()
    bad = text.replace('"output_tokens": 17,', '"output_tokens": 17.5,', 1)
    assert bad != text
    err = run("g3.json", bad)
    assert f"g3.json:{_line_of(bad, '17.5')}:" in err and "output_tokens: expected a whole number" in err

    assert "cannot tell which tool wrote this file" in run("x.csv", "time,watts\n1,2\n")
    assert "--scenario: expected single-stream" in run("p4.jsonl", _aiperf(), "--scenario", "bursty")
    err = _argparse_error(["import", "f", "--batch", "0"], capsys)
    assert "argument --batch: expected a whole number > 0, got '0'" in err


def _argparse_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        harness(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def test_refuses_non_regular_files_and_existing_runs(tmp_path, capsys, exports):
    a, _ = exports
    out = tmp_path / "r"
    assert harness(["import", str(a), "--output", str(out), "--name", "one"]) == 0
    assert harness(["import", str(a), "--output", str(out), "--name", "one"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert harness(["import", "/dev/zero", "--output", str(out), "--tool", "aiperf"]) == 2
    assert "/dev/zero: not a regular file" in capsys.readouterr().err
    assert harness(["import", str(a), "--output", str(out), "--name", "../escape"]) == 2
    assert "run name '../escape'" in capsys.readouterr().err


def test_guidellm_on_one_line_names_its_server(tmp_path):
    """guidellm 0.8.1 writes its report as one line, which starts like an aiperf record
    ({"metadata": ..., "metrics" inside); and it names the server and model it ran against,
    which become the cell's device (as the openai-http backend labels that server) and model."""
    from harness.importers import detect, import_file
    from harness.importers.common import Labels
    from harness.results import load_run

    doc = json.loads(_guidellm())
    doc["config"]["spec"] = {"backend": {"kind": "openai_http", "target": "http://127.0.0.1:18315",
                                         "model": "tiny", "request_format": "/v1/chat/completions"}}
    g = tmp_path / "one-line.json"
    g.write_text(json.dumps(doc))
    assert g.read_text().count("\n") == 0 and detect(g) == "guidellm"
    (r,) = load_run(import_file(g, tmp_path / "res", name="g", labels=Labels(dtype="fp32")))[1]
    assert (r.device, r.model) == ("endpoint:127.0.0.1:18315", "tiny")
    assert r.sut["endpoint"] == "http://127.0.0.1:18315"
    # an explicit label wins; an export that names no server keeps the plain "endpoint"
    (r,) = load_run(import_file(g, tmp_path / "res", name="g2", labels=Labels(device="rngd-1", model="m")))[1]
    assert (r.device, r.model) == ("rngd-1", "m")
    h = tmp_path / "no-target.json"
    h.write_text(_guidellm())
    (r,) = load_run(import_file(h, tmp_path / "res", name="g3"))[1]
    assert r.device == "endpoint"


def test_aiperf_summary_beside_the_records_names_server_model_and_concurrency(tmp_path):
    """aiperf 0.13 writes profile_export_aiperf.json beside profile_export.jsonl; its
    input_config names the server, the model and the profiling phase's concurrency."""
    from harness.importers import import_file
    from harness.importers.common import Labels
    from harness.results import load_run

    d = tmp_path / "artifacts"
    d.mkdir()
    (d / "profile_export.jsonl").write_text(_aiperf())
    summary = {"schema_version": "1.4", "aiperf_version": "0.13.0",
               "input_config": {"models": {"items": [{"name": "tiny"}]},
                                "endpoint": {"urls": ["http://127.0.0.1:18317"], "type": "chat", "streaming": True},
                                "phases": [{"name": "warmup", "kind": "warmup", "type": "concurrency", "concurrency": 2},
                                           {"name": "profiling", "kind": "profiling", "type": "concurrency",
                                            "requests": 64, "concurrency": 8}]}}
    (d / "profile_export_aiperf.json").write_text(json.dumps(summary))
    (r,) = load_run(import_file(d / "profile_export.jsonl", tmp_path / "res", name="a", labels=Labels(dtype="fp32")))[1]
    # 8, not the 4 streams' peak in flight: the label is aiperf's own setting
    assert (r.device, r.model, r.batch, r.sut["tool_version"]) == ("endpoint:127.0.0.1:18317", "tiny", 8, "0.13.0")
    # a summary that is not JSON is passed over, and the record says so
    (d / "profile_export_aiperf.json").write_text("{not json")
    (r,) = load_run(import_file(d / "profile_export.jsonl", tmp_path / "res", name="b"))[1]
    assert (r.device, r.model, r.batch) == ("endpoint", "unknown", STREAMS)
    assert "not read" in r.sut["tool_labels"]["sidecar"]
