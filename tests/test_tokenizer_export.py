"""Issue 15: `harness serve --export-tokenizer DIR` writes a Hugging Face tokenizer folder
that other tools (aiperf, guidellm, inference-perf) load offline, and that agrees with
the server's own `/tokenize` and `/detokenize` (vLLM's request and response shapes).

A real `python -m harness.serve` process writes the folder and serves; the folder is
loaded with `transformers.AutoTokenizer` (code nobody here wrote) and checked against
the server on many strings drawn by hypothesis, and against the ids expected from the
documented rule (one token per UTF-8 byte, id = byte value), computed here.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
import subprocess
import sys
import time
import urllib.error
import urllib.request

from hypothesis import HealthCheck, given, settings, strategies as st
import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_SEQ = 256

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tok")
    folder, ready, err = tmp / "tokenizer", tmp / "ready", tmp / "stderr.txt"
    with open(err, "w") as ferr:
        proc = subprocess.Popen([sys.executable, "-m", "harness.serve", "--model", "tiny", "--port", "0",
                                 "--max-batch", "2", "--max-seq", str(MAX_SEQ), "--option", "threads=1",
                                 "--export-tokenizer", str(folder), "--ready-file", str(ready)],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=ferr, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        yield {"url": ready.read_text().strip(), "folder": folder,
               "tok": transformers.AutoTokenizer.from_pretrained(str(folder))}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "Traceback" not in err.read_text()


def post(url: str, path: str, body: dict) -> tuple[int, dict]:
    rq = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(rq, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_folder_holds_what_transformers_needs(served):
    names = sorted(p.name for p in served["folder"].iterdir())
    assert names == ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    tok = served["tok"]
    assert tok.model_max_length == MAX_SEQ and len(tok) == 256
    assert tok.bos_token is None and tok.eos_token is None  # the server adds no special tokens


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(min_size=1, max_size=80))
def test_ids_round_trip_between_transformers_and_the_server(served, text):
    tok, url = served["tok"], served["url"]
    expected = list(text.encode("utf-8"))  # the documented rule, computed here
    status, out = post(url, "/tokenize", {"prompt": text})
    assert status == 200 and out["tokens"] == expected and out["count"] == len(expected)
    assert out["max_model_len"] == MAX_SEQ
    assert tok.encode(text, add_special_tokens=False) == expected == tok(text)["input_ids"]
    assert tok.decode(expected) == text
    status, back = post(url, "/detokenize", {"tokens": expected})
    assert status == 200 and back == {"prompt": text}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(st.integers(0, 255), min_size=1, max_size=40))
def test_any_byte_ids_detokenize_as_transformers_decodes_them(served, ids):
    """Byte sequences that are not UTF-8 too: both replace what cannot be decoded alike."""
    status, back = post(served["url"], "/detokenize", {"tokens": ids})
    assert status == 200 and back["prompt"] == served["tok"].decode(ids)


def test_chat_template_gives_the_servers_chat_ids(served):
    tok, url = served["tok"], served["url"]
    msgs = [{"role": "system", "content": "sé"}, {"role": "user", "content": "hi there"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    expected = list("sé\nhi there\na\nb".encode())  # contents joined by newlines, roles unmarked
    assert tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True,
                                   return_dict=True)["input_ids"] == expected
    status, out = post(url, "/tokenize", {"messages": msgs})
    assert status == 200 and out["tokens"] == expected
    status, out = post(url, "/v1/chat/completions", {"messages": msgs, "max_tokens": 5})
    assert status == 200 and out["usage"]["prompt_tokens"] == len(expected)
    # generated text costs exactly completion_tokens with the exported tokenizer (aiperf counts so)
    assert len(tok.encode(out["choices"][0]["message"]["content"], add_special_tokens=False)) == 5


def test_detokenize_and_tokenize_refuse_what_has_no_text(served):
    url = served["url"]
    for body in ({"tokens": [104, 300]}, {"tokens": [-1]}, {"tokens": "abc"}, {"tokens": [1.5]}, {}):
        status, out = post(url, "/detokenize", body)
        assert status == 400 and out["error"]["message"], body
    status, out = post(url, "/detokenize", {"tokens": [104, 300]})
    assert "300" in out["error"]["message"]
    status, out = post(url, "/tokenize", {"prompt": "\ud800"})  # a lone surrogate: JSON carries it, UTF-8 cannot
    assert status == 400 and "Unicode" in out["error"]["message"]
    status, out = post(url, "/v1/completions", {"prompt": "a\udfffb", "max_tokens": 1})
    assert status == 400


def _serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.serve", "--model", "tiny", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_bad_export_folder_is_exit_2_with_one_error_line(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    link = tmp_path / "link"
    os.symlink(tmp_path / "elsewhere", link)
    for target, says in ((a_file, "not a directory"), (link, "symbolic link")):
        p = _serve("--export-tokenizer", str(target))
        assert p.returncode == 2, p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0] and str(target) in lines[0]
        assert "Traceback" not in p.stderr
    assert not (tmp_path / "elsewhere").exists()
