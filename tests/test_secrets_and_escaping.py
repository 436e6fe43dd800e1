"""Issue 14 items 6 and 8: one redaction rule for secrets (harness.redact), and
Markdown reports that render hostile names inert."""
from __future__ import annotations

import json
from pathlib import Path
import shutil
import subprocess
import sys

import pytest
import yaml

from harness.redact import REDACTED, redact_suite, redact_text, redact_url, redact_yaml_text, secrets_of

ROOT = Path(__file__).resolve().parent.parent
V1 = ROOT / "tests" / "data" / "v1_runs" / "before-smoke-est"

PASSWORD, HEADER_VALUE = "hunter2-pw", "tok-SECRET-123456"
SUITE_TEXT = f"""\
name: leak  # comment kept
backends:
  - type: openai-http
    name: remote
    options:
      url: http://bob:{PASSWORD}@127.0.0.1:9/v1
      headers:
        X-Api-Key: {HEADER_VALUE}
        X-Other: "short1"
      api_key_env: MY_KEY_ENV
workloads:
  - model: tiny
"""


def test_redact_url_removes_userinfo_and_credential_query():
    assert redact_url(f"http://bob:{PASSWORD}@h:8000/v1") == "http://***@h:8000/v1"
    assert PASSWORD not in redact_url(f"https://h/v1?api_key={PASSWORD}&n=1")
    assert "n=1" in redact_url(f"https://h/v1?api_key={PASSWORD}&n=1")
    # unparseable by urlsplit: the userinfo still goes
    assert PASSWORD not in redact_url(f"http://bob:{PASSWORD}@[::1")
    assert redact_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000"


def test_redact_suite_keeps_names_and_env_var_name():
    suite = yaml.safe_load(SUITE_TEXT)
    out = redact_suite(suite)
    opts = out["backends"][0]["options"]
    assert opts["headers"] == {"X-Api-Key": REDACTED, "X-Other": REDACTED}  # names kept, values gone
    assert opts["api_key_env"] == "MY_KEY_ENV"  # the *name* of the variable is not a secret
    assert opts["url"] == "http://***@127.0.0.1:9/v1"
    dumped = json.dumps(out)
    assert PASSWORD not in dumped and HEADER_VALUE not in dumped
    assert suite["backends"][0]["options"]["headers"]["X-Api-Key"] == HEADER_VALUE  # input untouched
    assert set(secrets_of(suite)) >= {PASSWORD, HEADER_VALUE}


def test_redact_suite_is_bounded_on_deep_and_shared_input():
    deep: dict = {}
    cur = deep
    for _ in range(10_000):  # deeper than the recursion limit: must not raise
        cur["a"] = {}
        cur = cur["a"]
    redact_suite(deep)
    shared = {"url": f"http://u:{PASSWORD}@h"}
    wide = {"l": [shared] * 100_000}
    assert PASSWORD not in json.dumps(redact_suite(wide))


def test_redact_yaml_text_keeps_lines_and_comments():
    out = redact_yaml_text(SUITE_TEXT)
    assert PASSWORD not in out and HEADER_VALUE not in out and "short1" not in out
    assert out.count("\n") == SUITE_TEXT.count("\n")  # file:line messages about the copy stay right
    assert "# comment kept" in out and "X-Api-Key" in out and "MY_KEY_ENV" in out
    again = yaml.safe_load(out)
    assert again["backends"][0]["options"]["headers"]["X-Api-Key"] == REDACTED


def test_redact_text_scrubs_known_secrets_and_urls():
    msg = f"connect to http://bob:{PASSWORD}@h failed; server said: bad key {HEADER_VALUE}"
    out = redact_text(msg, [HEADER_VALUE])
    assert PASSWORD not in out and HEADER_VALUE not in out and "failed" in out


def test_openai_http_describe_and_errors_never_hold_secrets(monkeypatch):
    from backends.base import BackendError
    from backends.openai_http import OpenAIHttpClient, OpenAIHttpOptions

    opts = OpenAIHttpOptions(url=f"http://bob:{PASSWORD}@127.0.0.1:9/v1", model="m",
                             headers={"X-Api-Key": HEADER_VALUE})
    c = OpenAIHttpClient(opts)
    d = json.dumps(c.describe())
    assert PASSWORD not in d and HEADER_VALUE not in d and "X-Api-Key" in d
    assert PASSWORD not in c._scrub(f"echo http://bob:{PASSWORD}@x {HEADER_VALUE}")
    assert HEADER_VALUE not in c._scrub(f"echo {HEADER_VALUE}")
    # a URL that does not parse: the error message names it without the password
    for bad in (f"http://bob:{PASSWORD}@[::1", f"http://bob:{PASSWORD}@h:99999", f"ftp://bob:{PASSWORD}@h"):
        with pytest.raises(BackendError) as e:
            OpenAIHttpClient(OpenAIHttpOptions(url=bad, model="m"))
        assert PASSWORD not in str(e.value)
    # the model-listing error goes through _scrub (nothing listens on port 9)
    with pytest.raises(BackendError) as e:
        c.check()
    assert PASSWORD not in str(e.value) and HEADER_VALUE not in str(e.value)


# --- Markdown escaping ----------------------------------------------------------------------------

PAYLOADS = {"torch-cpu": "torch<script>alert(1)</script>",
            "onnx-cpu": "onnx<img src=x onerror=alert(2)>",
            "smoke-estimate": "suite<svg onload=alert(3)>&amp;"}


def _swap(obj):
    if isinstance(obj, str):
        return PAYLOADS.get(obj, obj)
    if isinstance(obj, dict):
        return {k: _swap(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_swap(v) for v in obj]
    return obj


@pytest.fixture()
def hostile_run(tmp_path):
    run = tmp_path / "hostile-run"
    shutil.copytree(V1, run)
    meta = _swap(json.loads((run / "run.json").read_text()))
    meta["config"]["description"] = "<script>alert('desc')</script>"
    (run / "run.json").write_text(json.dumps(meta))
    lines = [_swap(json.loads(x)) for x in (run / "results.jsonl").read_text().splitlines() if x.strip()]
    # one failed cell whose error message holds a payload (error messages reach the report)
    lines[-1]["status"] = "failed"
    lines[-1]["error"] = {"message": "boom <img src=y onerror=alert(4)>", "kind": "crash"}
    (run / "results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return run


def test_markdown_report_renders_hostile_names_inert(hostile_run, tmp_path):
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "harness", "report", str(hostile_run), "--out", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    md = (out / "report.md").read_text()
    low = md.lower()
    for tag in ("<script", "<img", "<svg"):
        assert tag not in low, tag
    # the payloads are there, as text
    assert "torch&lt;script&gt;alert(1)&lt;/script&gt;" in md
    assert "&lt;svg onload=alert(3)&gt;&amp;amp;" in md
    html = (out / "report.html").read_text().lower()
    assert "<script" not in html and "<svg onload" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)" in html


def test_table_markdown_escapes_cells_but_keeps_our_formatting():
    from harness.report.document import Document, Table, to_markdown

    doc = Document(title="t <b>")
    doc.p("**bold** and `code` & <i>x</i>")
    t = Table(["a<", "b"])
    t.add(["FAILED <script>", "x|y"], "invalid")
    doc.table(t)
    md = to_markdown(doc)
    assert "<" not in md.replace("&lt;", "")
    assert "**bold** and `code` &amp; &lt;i&gt;x&lt;/i&gt;" in md
    assert "**FAILED &lt;script&gt;**" in md and "x\\|y" in md


def test_verdict_and_compare_markdown_escape_html():
    """verify --markdown and compare --markdown write Markdown themselves: names from claims
    files and runs must be inert there too."""
    from harness.verdicts import _md

    payload = "<script>alert(1)</script> | <img src=x onerror=y>"
    out = _md(payload)
    assert "<script" not in out and "<img" not in out and "\\|" in out
