"""Issue 14 item 9: `harness serve` answers every malformed request with a 4xx JSON error,
stays up, caps connections, and with --api-key-env guards every route. A real server
process on 127.0.0.1, raw sockets and http.client; its stderr must hold no traceback."""
from __future__ import annotations

import http.client
import json
import os
from pathlib import Path
import socket
import subprocess
import sys
import time

import pytest

ROOT = Path(__file__).resolve().parent.parent
KEY = "serve-hostile-test-key-0123"
MAX_BODY, MAX_HEADERS, MAX_CONN = 4096, 8192, 6
AUTH = f"Authorization: Bearer {KEY}\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    ready, err = tmp / "ready", tmp / "stderr.txt"
    env = dict(os.environ, HOSTILE_KEY=KEY)
    with open(err, "w") as ferr:
        proc = subprocess.Popen([sys.executable, "-m", "harness.serve", "--model", "tiny", "--port", "0",
                                 "--max-batch", "2", "--max-seq", "64", "--option", "threads=1",
                                 "--api-key-env", "HOSTILE_KEY", "--max-body-bytes", str(MAX_BODY),
                                 "--max-header-bytes", str(MAX_HEADERS), "--max-connections", str(MAX_CONN),
                                 "--ready-file", str(ready)], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=ferr)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        url = ready.read_text().strip()
        host, port = url.rsplit("/", 1)[1].split(":")
        yield {"host": host, "port": int(port), "proc": proc, "stderr": err}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = err.read_text()
    assert "Traceback" not in text, text


def raw(server, data: bytes, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """Send bytes on a fresh connection; (status, JSON body or {}, raw answer)."""
    with socket.create_connection((server["host"], server["port"]), timeout=timeout) as s:
        try:
            s.sendall(data)
        except OSError:
            pass  # the server may answer and close before it took everything (a 413, a 431)
        buf = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
                head, sep, body = buf.partition(b"\r\n\r\n")
                if sep:
                    n = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")), None)
                    if n is not None and len(body) >= n:
                        break
        except (ConnectionResetError, socket.timeout):
            pass
    head, _, body = buf.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    try:
        obj = json.loads(body)
    except ValueError:
        obj = {}
    return status, obj, buf


def post(server, body: bytes, extra: str = AUTH, path: str = "/v1/completions") -> tuple[int, dict, bytes]:
    return raw(server, (f"POST {path} HTTP/1.1\r\nHost: x\r\n{extra}Content-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body)


def assert_json_error(status: int, obj: dict, expect: int) -> None:
    assert status == expect, (status, obj)
    assert obj["error"]["code"] == expect and obj["error"]["message"]


def alive(server) -> None:
    """The server still answers a normal request."""
    status, obj, _ = post(server, json.dumps({"prompt": [1, 2, 3], "max_tokens": 3}).encode())
    assert status == 200 and obj["usage"]["completion_tokens"] == 3, obj


def test_every_route_needs_the_key(server):
    for path in ("/v1/models", "/health", "/stats", "/nope"):
        st, obj, _ = raw(server, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        assert_json_error(st, obj, 401)
        st, obj, _ = raw(server, f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n"
                                 "Connection: close\r\n\r\n".encode())
        assert_json_error(st, obj, 401)
    st, obj, _ = raw(server, f"GET /v1/models HTTP/1.1\r\nHost: x\r\n{AUTH}Connection: close\r\n\r\n".encode())
    assert st == 200 and obj["data"][0]["id"] == "tiny"
    st, obj, _ = post(server, b'{"prompt": [1], "max_tokens": 2}', extra="")
    assert_json_error(st, obj, 401)
    # a non-ASCII Authorization value is a wrong key, not a crash
    st, obj, _ = post(server, b'{"prompt": [1]}', extra="Authorization: Bearer \xff\xfe\r\n")
    assert_json_error(st, obj, 401)
    alive(server)


@pytest.mark.parametrize("body", [
    b"[" * 2000 + b"]" * 2000,  # within the body limit, far past the nesting limit
    b'{"prompt": ' + b"[" * 1000 + b"1" + b"]" * 1000 + b"}",
    b'{"a":' * 500 + b"1" + b"}" * 500,
    b"[" * 4000,  # unterminated
    b"not json", b"\xff\xfe\x00", b"[]", b"12", b'"s"', b"null",
])
def test_bad_json_is_400(server, body):
    st, obj, _ = post(server, body)
    assert_json_error(st, obj, 400)


@pytest.mark.parametrize("field", ["max_tokens", "min_tokens"])
@pytest.mark.parametrize("value", ['"5"', "5.0", "true", "1e400", "-1e400", "[1]", "{}", "-3",
                                   "9" * 4000, "99999999999999999999"])
def test_token_counts_of_wrong_type_or_range_are_400(server, field, value):
    st, obj, _ = post(server, f'{{"prompt": [1, 2], "max_tokens": 2, "{field}": {value}}}'.replace(
        f'"max_tokens": 2, "max_tokens"', '"max_tokens"').encode())
    assert_json_error(st, obj, 400)


@pytest.mark.parametrize("length", ["abc", "-1", "1e3", "+5", " 0x10", "99999999999999999999999", "5, 5"])
def test_bad_content_length_is_400_without_reading(server, length):
    t0 = time.monotonic()
    st, obj, _ = raw(server, f"POST /v1/completions HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Length: {length}\r\n"
                             "\r\n".encode(), timeout=10)  # the client keeps the socket open: no EOF
    assert_json_error(st, obj, 400)
    assert time.monotonic() - t0 < 5


def test_two_content_lengths_are_400(server):
    st, obj, _ = raw(server, f"POST /v1/completions HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Length: 2\r\n"
                             "Content-Length: 3\r\n\r\n{}".encode())
    assert_json_error(st, obj, 400)


def test_body_over_the_limit_is_413_unread(server):
    t0 = time.monotonic()
    st, obj, _ = raw(server, f"POST /v1/completions HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Length: {10**12}\r\n"
                             "\r\n".encode())
    assert_json_error(st, obj, 413)
    assert time.monotonic() - t0 < 5
    big = json.dumps({"prompt": "a" * (MAX_BODY + 10)}).encode()
    st, obj, _ = post(server, big)
    assert_json_error(st, obj, 413)
    alive(server)


def test_chunked_body_is_411(server):
    st, obj, _ = raw(server, f"POST /v1/completions HTTP/1.1\r\nHost: x\r\n{AUTH}Transfer-Encoding: chunked\r\n"
                             "\r\n2\r\n{}\r\n0\r\n\r\n".encode())
    assert_json_error(st, obj, 411)


def test_headers_too_large_are_431(server):
    many = "".join(f"X-H{i}: {'v' * 100}\r\n" for i in range(MAX_HEADERS // 100 + 5))  # total over the limit
    st, obj, _ = raw(server, f"GET /health HTTP/1.1\r\nHost: x\r\n{AUTH}{many}\r\n".encode())
    assert_json_error(st, obj, 431)
    one_line = f"X-Big: {'v' * 70000}\r\n"  # over the standard library's 64 KiB line limit
    st, obj, _ = raw(server, f"GET /health HTTP/1.1\r\nHost: x\r\n{one_line}\r\n".encode())
    assert 400 <= st < 500 and obj["error"]["message"], (st, obj)
    too_many = "".join(f"X-{i}: 1\r\n" for i in range(150))  # over the 100-header limit
    st, obj, _ = raw(server, f"GET /health HTTP/1.1\r\nHost: x\r\n{too_many}\r\n".encode())
    assert 400 <= st < 500 and obj["error"]["message"], (st, obj)
    alive(server)


@pytest.mark.parametrize("data", [b"GARBAGE\r\n\r\n", b"GET\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"GET /v1/models\r\n\r\n",
                                  b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00\xff\r\n\r\n"])
def test_malformed_request_lines_are_4xx_json(server, data):
    st, obj, _ = raw(server, data)
    assert 400 <= st < 500 and obj["error"]["message"], (st, obj)


def test_bad_prompts_and_models_are_4xx(server):
    for body, code in [({"prompt": [1, "x"]}, 400), ({"prompt": [-1]}, 400), ({"prompt": [10**30]}, 400),
                       ({"prompt": []}, 400), ({"prompt": {"a": 1}}, 400), ({"prompt": [1], "model": ["x"]}, 404),
                       ({"prompt": [1], "model": "m" * 3000}, 404)]:
        st, obj, _ = post(server, json.dumps(body).encode())
        assert_json_error(st, obj, code)
        assert len(obj["error"]["message"]) < 1000  # an echoed value is cut short


def test_connection_cap(server):
    idle = [socket.create_connection((server["host"], server["port"]), timeout=10) for _ in range(MAX_CONN)]
    try:
        time.sleep(0.5)  # let the server accept them all
        st, obj, _ = raw(server, f"GET /health HTTP/1.1\r\nHost: x\r\n{AUTH}\r\n".encode())
        assert_json_error(st, obj, 503)
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 10
    while True:  # the slots come back once the server sees the idle connections close
        st, obj, _ = raw(server, f"GET /health HTTP/1.1\r\nHost: x\r\n{AUTH}Connection: close\r\n\r\n".encode())
        if st == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert st == 200, (st, obj)
    alive(server)


def test_http_client_normal_and_stream(server):
    c = http.client.HTTPConnection(server["host"], server["port"], timeout=30)
    hdr = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    c.request("POST", "/v1/completions", json.dumps({"prompt": "hi", "max_tokens": 4, "stream": True}), hdr)
    r = c.getresponse()
    text = r.read().decode()
    assert r.status == 200 and text.rstrip().endswith("data: [DONE]")
    c.request("POST", "/tokenize", json.dumps({"content": "abc"}), hdr)  # the same keep-alive connection
    r = c.getresponse()
    assert r.status == 200 and json.loads(r.read())["count"] == 3
    c.close()


def test_official_openai_client(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"http://{server['host']}:{server['port']}/v1", api_key=KEY, max_retries=0)
    out = client.completions.create(model="tiny", prompt=[1, 2, 3], max_tokens=3)
    assert out.usage.completion_tokens == 3


def test_server_survived_everything(server):
    assert server["proc"].poll() is None
    alive(server)


@pytest.mark.parametrize("argv,needle", [(["--port", "99999"], "--port"), (["--port", "-5"], "--port"), (["--max-seq", "-1"], "--max-seq"),
                                         (["--host", "256.1.1.1"], "--host")])
def test_bad_port_or_host_is_one_located_error_before_any_model_load(argv, needle):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "harness", "serve", "--model", "tiny", *argv],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_client_disconnect_mid_stream_is_one_log_line(server):
    """Issue 20: a client that hangs up mid-stream is logged in one line (no traceback), its
    request is cancelled, and the server keeps answering."""
    body = json.dumps({"model": "tiny", "prompt": [5, 6, 7, 8], "max_tokens": 60, "min_tokens": 60,
                       "stream": True}).encode()
    req = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Type: application/json\r\n"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    before = server["stderr"].read_text().count("client disconnected")
    s = socket.create_connection((server["host"], server["port"]), timeout=30)
    s.sendall(req)
    got = b""
    while got.count(b"data: ") < 2:  # the stream has started
        chunk = s.recv(4096)
        assert chunk, got
        got += chunk
    # RST instead of FIN, so the server's next write fails at once
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()
    deadline = time.monotonic() + 30
    while server["stderr"].read_text().count("client disconnected") == before:
        assert time.monotonic() < deadline, server["stderr"].read_text()[-2000:]
        time.sleep(0.1)
    lines = [ln for ln in server["stderr"].read_text().splitlines() if "client disconnected" in ln]
    assert len(lines) == before + 1 and "request cancelled" in lines[-1], lines
    assert "Traceback" not in server["stderr"].read_text()
    status, obj, _ = raw(server, (f"GET /v1/models HTTP/1.1\r\nHost: x\r\n{AUTH}\r\n").encode())
    assert status == 200 and obj["data"], obj
