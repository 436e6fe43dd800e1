"""report / compare / verify on two real (tiny) runs made here, and the HTML they produce."""
import base64
from html.parser import HTMLParser
import json
import os
from pathlib import Path
import platform
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from harness.cli import main

ROOT = Path(__file__).resolve().parent.parent

SUITE = """\
name: report-{name}
seed: 0
warmup: 1
repetitions: 3
timeout_s: 120
backends:
  - type: torch
    name: {name}
    options: {{device: cpu, threads: {threads}}}
meters:
  - {{type: command, argv: ["echo", "power 42.5 W"], regex: "power (?P<watts>[0-9.]+) W", period_s: 0.05,
     scope: cpu-package, name: fake-smi}}
  - {{type: estimate, watts: 65, scope: cpu-package, source: "TDP datasheet"}}
workloads:
  - model: tiny
    dtypes: [fp32]
    batch_sizes: [1, 2]
    prompt_lens: [16]
    gen_lens: [8]
energy: {{idle_s: 0.1, min_window_s: 0.15, min_updates: 2}}
accuracy: {{seq_len: 8, prefill_len: 4, batch: 1}}
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two real runs of the tiny model (1 and 2 threads), made concurrently, with a
    calibration file so that roofline % is known."""
    root = tmp_path_factory.mktemp("report")
    out = root / "results"
    cal_dir = out / "calibration"
    cal_dir.mkdir(parents=True)
    host = platform.node() or "host"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{host}_cpu")
    (cal_dir / f"{safe}.json").write_text(json.dumps({
        "device": "cpu", "host": host, "memory_bandwidth_Bps": 30e9,
        "matmul_flops": {"fp32": 200e9, "bf16": 200e9, "fp16": 100e9}}))
    procs = []
    env = dict(os.environ, OMP_NUM_THREADS="2")
    for name, threads in (("torch-1t", 1), ("torch-2t", 2)):
        suite = root / f"{name}.yaml"
        suite.write_text(SUITE.format(name=name, threads=threads))
        procs.append(subprocess.Popen([sys.executable, "-m", "harness", "run", str(suite), "--output", str(out),
                                       "--name", name, "--quiet"], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for p in procs:
        text, _ = p.communicate(timeout=240)
        assert p.returncode == 0, text
    return out / "torch-1t", out / "torch-2t"


class StrictParser(HTMLParser):
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.imgs, self.urls, self.errors = [], [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k in ("src", "href", "action", "data", "poster"):
            if k in a:
                self.urls.append(a[k])
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


@pytest.fixture(scope="module")
def full_report(runs, tmp_path_factory):
    """One report of both runs with prices and a claims file (shared by the checks below)."""
    tmp = tmp_path_factory.mktemp("full")
    claims = tmp / "claims.yaml"
    claims.write_text("claims:\n  - name: two threads decode faster\n    metric: decode_tps\n"
                      "    subject: {backend: torch-2t}\n    baseline: {backend: torch-1t}\n"
                      "    workload: {model: tiny, batch: best, prompt_len: 16, gen_len: 8}\n    at_least: 0.01\n")
    return _report(runs, tmp, "--prices", str(ROOT / "workloads/prices.example.yaml"), "--claims", str(claims))


def _report(runs, tmp_path, *extra):
    out = tmp_path / "rep"
    assert main(["report", *map(str, runs), "--out", str(out), *extra]) == 0
    return out, (out / "report.md").read_text(), (out / "report.html").read_text()


def test_report_markdown_and_html(full_report):
    out, md, html = full_report
    # Markdown: the llama-bench table with intervals, per device, and every section
    assert "| model | params | dtype | backend | batch | test | t/s | n | % roof | J/token |" in md
    # one central figure: the median with its 95 % interval (noisy: ~), no mean ± sd beside it
    assert re.search(r"\| tiny \| 2\.\d+ M \| fp32 \| torch-1t † \| 1 \| tg8 \| [\d.,]+ \[[\d.,]+, [\d.,]+\]( ~)? \| \d+ \|",
                     md)
    for heading in ("## Runs", "## At a glance", "## Device: cpu", "### Procurement figures", "### Energy provenance",
                    "## Figures", "## Claim verdicts", "## Methods and definitions"):
        assert heading in md, heading
    assert "ESTIMATE (not measured)" in md and "fake-smi | sampled | cpu-package | ok" in md
    assert "cost per 1M tokens (USD)" in md and "USD " in md
    assert "tokens/J" in md and "J per 1k tokens" in md and "tok/s per W" in md
    assert "Roofline basis: calibration cpu" in md and " %" in md
    for png in ("batch", "tradeoff", "timeline"):
        assert (out / "plots" / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(plots/{png}.png)" in md
    assert "SUPPORTED" in md
    # HTML: well formed, every image embedded, nothing fetched from anywhere
    p = StrictParser()
    p.feed(html)
    p.close()
    assert not p.errors and not p.stack, (p.errors, p.stack)
    assert len(p.imgs) == 3
    for src in p.imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:4] == b"\x89PNG"
    assert all(u.startswith(("#", "data:")) for u in p.urls), p.urls
    assert not re.search(r"https?://", html)
    assert "<script" not in html and "<link" not in html
    assert html.count("<table>") >= 5


def test_invalid_cell_is_shown_and_never_best(runs, tmp_path):
    """A copy of the 2-thread run whose batch-2 cell failed the accuracy gate."""
    bad = tmp_path / "torch-2t-bad"
    shutil.copytree(runs[1], bad)
    lines = [json.loads(x) for x in (bad / "results.jsonl").read_text().splitlines() if x.strip()]
    for r in lines:
        if r["batch"] == 2:
            r["status"], r["valid"] = "invalid", False
            r["accuracy"] = dict(r["accuracy"], passed=False, status="fail", rel_err=0.3)
            r["metrics"]["decode_tps"]["samples"] = [1e9] * 3  # absurdly fast: must still not win
            r["metrics"]["decode_tps"]["median"] = 1e9
    meta = json.loads((bad / "run.json").read_text())
    meta["run_id"] = "torch-2t-bad"
    (bad / "run.json").write_text(json.dumps(meta))
    (bad / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    _, md, html = _report([runs[0], bad], tmp_path)
    glance = md.split("## At a glance")[1].split("## Device")[0]
    assert "1e+09" not in glance and "INVALID cell(s)" in glance
    assert "| **INVALID " in md and "INVALID" in md.split("### Procurement figures")[1].split("### Energy")[0]
    assert 'class="invalid"' in html


def test_timeline_choice_and_report_errors(runs, tmp_path, capsys):
    cell = json.loads((runs[0] / "results.jsonl").read_text().splitlines()[0])["cell_id"]
    _, md, _ = _report(runs[:1], tmp_path, "--timeline", cell)
    assert f"Power of cell {cell}" in md
    assert main(["report", str(runs[0]), "--out", str(tmp_path / "x"), "--timeline", "no/such/cell"]) == 2
    assert "no such cell" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2
    prices = tmp_path / "prices.yaml"
    prices.write_text("currency: EUR\nelectricity_per_kwh: cheap\nutilisation: 0.5\n")
    assert main(["report", str(runs[0]), "--out", str(tmp_path / "y"), "--prices", str(prices)]) == 2
    err = capsys.readouterr().err
    assert f"{prices}:2: electricity_per_kwh: expected a number" in err and "Traceback" not in err


def test_compare_two_real_runs(runs, tmp_path, capsys):
    md = tmp_path / "cmp.md"
    assert main(["compare", *map(str, runs), "--markdown", str(md)]) == 0
    out = capsys.readouterr().out
    assert "B / A" in out and "tiny fp32 b1 pp16+tg8" in out and "tiny fp32 b2 pp16+tg8" in out
    text = md.read_text()
    assert "Reference (A): **torch-1t: torch-1t @ cpu" in text
    assert text.count("| tiny fp32 b") >= 8  # 2 workloads x >= 4 metrics
    assert "tokens_per_joule" in text and "geometric mean" in text
    assert main(["compare", str(runs[0])]) == 2  # one configuration: nothing to compare
    assert "at least two configurations" in capsys.readouterr().err
    assert main(["compare", *map(str, runs), "--metric", "speed"]) == 2


def test_verify_two_real_runs(runs, tmp_path, capsys):
    claims = tmp_path / "claims.yaml"
    claims.write_text("""\
claims:
  - name: two threads are not 100x slower
    metric: decode_tps
    subject: {backend: torch-2t}
    baseline: {backend: torch-1t}
    workload: {model: tiny, batch: 1, prompt_len: 16, gen_len: 8}
    at_least: 0.01
  - name: two threads are 1000x more efficient
    metric: tokens_per_joule
    subject: {backend: torch-2t}
    baseline: {backend: torch-1t}
    workload: {model: tiny, batch: best, prompt_len: 16, gen_len: 8}
    at_least: 1000
  - name: two threads decode 1000x faster
    metric: decode_tps
    subject: {backend: torch-2t}
    baseline: {backend: torch-1t}
    workload: {model: tiny, batch: best, prompt_len: 16, gen_len: 8}
    at_least: 1000
    required: true
""")
    # the required claim is on timing: an energy claim may be INCONCLUSIVE on a loaded machine (its
    # energy windows can run at another speed than the timed repetitions: flagged, never judged)
    md = tmp_path / "verdicts.md"
    assert main(["verify", str(claims), *map(str, runs), "--markdown", str(md)]) == 1
    out = capsys.readouterr().out
    assert "SUPPORTED" in out and "REFUTED" in out and "1 required claim(s) refuted" in out
    text = md.read_text()
    assert "Best baseline configuration measured" in text
    assert "3 repetition(s) (&lt; 5)" in text  # the caveat for a 3-repetition run (Markdown escapes "<")
    assert "energy: fake-smi, sampled, cpu-package" in text


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
        if path:
            return path
    return None


# CI (.ci/run) installs Chromium and sets this: there, a missing browser fails instead of skipping
_BROWSER_REQUIRED = os.environ.get("HARNESS_REQUIRE_BROWSER") == "1"

# run in the browser after load, on a copy of the report (the report itself has no script): what a
# reader sees, written into the DOM that --dump-dom prints
_CHECK_SCRIPT = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const h2 = Array.from(document.querySelectorAll("h2"));
  const sect = (name) => { const h = h2.find(e => e.textContent.trim() === name); if (!h) return null;
    let n = h.nextElementSibling, height = 0, text = "";
    while (n && n.tagName !== "H2") { height += n.getBoundingClientRect().height; text += " " + n.innerText;
                                      n = n.nextElementSibling; }
    return {height: height, text: text}; };
  document.body.setAttribute("data-check", JSON.stringify({
    images: imgs.length, broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
    h2: h2.map(e => e.textContent.trim()), glance: sect("At a glance"), verdicts: sect("Claim verdicts")}));
});
</script>"""


def _browser_dom_check(html: Path, tmp_path: Path) -> dict:
    import html as htmllib

    page = tmp_path / "check.html"
    page.write_text(html.read_text().replace("</body>", _CHECK_SCRIPT + "</body>"))
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           f"--user-data-dir={tmp_path / 'profile-dom'}", "--virtual-time-budget=10000", "--dump-dom", page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False).stdout
    m = re.search(r'data-check="([^"]*)"', dom)
    assert m, f"the check script did not run: {dom[:500]!r}"
    return json.loads(htmllib.unescape(m.group(1)))


@pytest.mark.skipif(_chromium() is None and not _BROWSER_REQUIRED,
                    reason="no headless Chromium installed (Debian package `chromium`; .ci/run installs it)")
def test_html_renders_in_headless_chromium(full_report, tmp_path):
    """What a reader sees in a real browser: the verdicts and the procurement headline render first,
    with their content, and no image is broken (every <img> decoded: naturalWidth > 0)."""
    assert _chromium() is not None, "HARNESS_REQUIRE_BROWSER=1 but no Chromium on PATH"
    out, _, _ = full_report
    seen = _browser_dom_check(out / "report.html", tmp_path)
    assert seen["images"] == 3 and seen["broken"] == [], seen
    assert seen["h2"][:3] == ["Claim verdicts", "At a glance", "Runs"], seen["h2"]
    verdicts, glance = seen["verdicts"], seen["glance"]
    assert verdicts["height"] > 50 and "SUPPORTED" in verdicts["text"] and "two threads decode faster" in verdicts["text"]
    assert glance["height"] > 50 and "tokens/J" in glance["text"] and "fake-smi" in glance["text"]
    assert re.search(r"USD [\d.]+", glance["text"]), glance["text"][:500]
    # the check itself sees a broken image: one PNG corrupted on purpose
    broken = tmp_path / "broken.html"
    text = (out / "report.html").read_text()
    at = text.index("data:image/png;base64,") + len("data:image/png;base64,")
    broken.write_text(text[:at] + "AAAA" + text[at + 400:])
    assert len(_browser_dom_check(broken, tmp_path)["broken"]) == 1

    shot = tmp_path / "report.png"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1300,3000", f"--screenshot={shot}",
           (out / "report.html").as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=90, check=False)
    assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image as mpimg

    px = mpimg.imread(shot)
    assert px.shape[0] >= 2000 and px.shape[1] >= 1200
    assert px[..., :3].std() > 0.05  # not a blank page: text, tables and figures drew
    keep = os.environ.get("HARNESS_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


def test_cost_per_million_tokens_formula(tmp_path):
    """hardware = price / (lifetime x u x T) x 1e6; energy = (1e6/tpJ + idle_W x 1e6/T x (1-u)/u) x PUE / 3.6e6 x price."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_claims import record, write_run

    from harness.cells import load_cells
    from harness.report.prices import cost_per_million, load_prices

    run = write_run(tmp_path, "r", [record(tpj=10.0, backend="acc", device="cpu")])
    (cell,) = load_cells([run])
    prices = tmp_path / "p.yaml"
    prices.write_text("currency: EUR\nelectricity_per_kwh: 0.36\nutilisation: 0.5\npue: 2\nhardware:\n"
                      "  - match: {backend: acc}\n    price: 31557.6\n    lifetime_years: 1\n")
    e2e = float(np.median(cell.record.metrics["e2e_s"]["samples"]))
    T = cell.record.batch * cell.record.gen_len / e2e
    meter = cell.record.energy.meters[0]  # idle_w 50
    c = cost_per_million(cell, meter, load_prices(prices))
    assert c.hardware == pytest.approx(31557.6 / (365.25 * 86400 * 0.5 * T) * 1e6)
    busy_j, idle_j = 1e6 / 10.0, 50.0 * (1e6 / T) * 1.0
    assert c.energy == pytest.approx((busy_j + idle_j) * 2 / 3.6e6 * 0.36)
    assert c.total == pytest.approx(c.hardware + c.energy)


def test_prices_file_lists_every_mistake_with_its_line(tmp_path, capsys):
    prices = tmp_path / "prices.yaml"
    prices.write_text("currency: EUR\nelectricity_per_kwh: -1\nutilisation: 2\nhardware:\n"
                      "  - match: {}\n    price: 100\n  - match: {gpu: a100}\n    price: 100\n    lifetime_years: 3\n")
    from harness.report.prices import load_prices
    from harness.schema import ConfigError

    with pytest.raises(ConfigError) as e:
        load_prices(prices)
    assert e.value.problems == [
        f"{prices}:2: electricity_per_kwh: expected a value from 0 to 1e+06, got -1",
        f"{prices}:3: utilisation: expected a value from 1e-06 to 1, got 2",
        f"{prices}:5: hardware[0].match: expected at least one of backend, backend_type, device, host, run "
        "(e.g. {device: cuda:0})",
        f"{prices}:5: hardware[0].lifetime_years: required key missing",
        f"{prices}:7: hardware[1].match.gpu: unknown key (known keys: backend, backend_type, device, host, run)",
        f"{prices}:7: hardware[1].match: expected at least one of backend, backend_type, device, host, run "
        "(e.g. {device: cuda:0})"]


V1_RUNS = ROOT / "tests" / "data" / "v1_runs"


def test_version_1_runs_still_render(tmp_path):
    """Run folders written before records carried a schema version (a batch run with an
    estimate meter, a server run with the old request-scenario energy shape)."""
    _, md, html = _report([V1_RUNS / "before-smoke-est", V1_RUNS / "before-server"], tmp_path,
                          "--prices", str(ROOT / "workloads/prices.example.yaml"))
    # the batch figures as the version-1 harness rendered them
    # (one central figure: the median [95 % CI], ~ for a wide interval; no mean ± sd beside it)
    assert "| tiny | 2.89 M | fp32 | torch-cpu † | 1 | tg32 | 376 [295.6, 383.5] ~ | 5 | - | " \
           "0.352 (estimate) | ok 9e-07 |" in md
    assert ("| onnx-cpu fp32 p64/g32 † | 4 | pp64+tg32 | 3188 [2948, 3908] | 15.61 [14, 17.8] (estimate) | "
            "64.05 [56.2, 71.5] (estimate) | 31.88 [29.5, 39.1] (estimate) | 100 | estimate, estimate, cpu-package — "
            "ESTIMATE | 0.0418 + 0.00405 = USD 0.0458 (energy is an ESTIMATE) |") in md
    assert ("| onnx-cpu fp32 p64/g32 † | 4 | estimate | estimate | cpu-package | ESTIMATE (not measured) | - | 0 / 0 | "
            "0.514 / 0.574 | 100 | 100 | 0.04953 est. |  |") in md
    # the server cells' energy, read through the one energy shape
    assert "| torch-cpu fp32 [before-server] p32/g32 † | 4 | pp32+tg32 | - | 1.234 - (estimate) |" in md
    assert "0 (steady) | 10.9 (steady) | 100 | 100 | 0.8105 est. |" in md
    assert "## Methods and definitions" in md and "<table>" in html


def test_compare_same_backend_pairs_each_backend_with_itself(tmp_path):
    """A before / after comparison: each backend of the later run against the same backend of the
    first, not everything against the first configuration."""
    from harness.cells import load_cells
    from harness.report.compare import build_compare

    src = Path(__file__).parent / "data" / "v1_runs" / "before-smoke-est"
    for name in ("before", "after"):
        shutil.copytree(src, tmp_path / name)
        meta = json.loads((tmp_path / name / "run.json").read_text())
        (tmp_path / name / "run.json").write_text(json.dumps(dict(meta, run_id=name)))
    cells = load_cells([tmp_path / "before", tmp_path / "after"])
    paired = build_compare(cells, ("decode_tps",), same_backend=True)
    assert {(o[1], r[1]) for o, r in paired.refs.items()} == {(b, b) for b in ("torch-cpu", "onnx-cpu", "llamacpp-cpu")}
    assert len(paired.rows) == 6 and all(r.ratio.ratio == pytest.approx(1.0) for r in paired.rows)
    assert build_compare(cells, ("decode_tps",)).refs == paired.refs  # like with like is the default
    everything = build_compare(cells, ("decode_tps",), against_first=True)
    assert set(everything.refs.values()) == {("before", "torch-cpu", "cpu")}  # the first configuration
    assert len(everything.refs) == 5


def _compare_runs(tmp_path, batches, spread):
    """Runs A and B of the same backend label, B 20 % faster at decode on each batch, hand-written."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_claims import record, write_run

    from harness.cells import load_cells

    a = write_run(tmp_path, "a", [record(backend="gpu", batch=b, decode=100.0, spread=spread, n=10, seed=2 * i)
                                  for i, b in enumerate(batches)])
    b = write_run(tmp_path, "b", [record(backend="gpu", batch=b, decode=120.0, spread=spread, n=10, seed=2 * i + 1)
                                  for i, b in enumerate(batches)])
    return load_cells([a, b])


def test_compare_across_workloads_carries_each_workloads_uncertainty(tmp_path, capsys):
    """Two workloads with wide intervals of their own: the pooled interval is not the range of
    the two point ratios (the old, over-confident interval) and says that 2 workloads are few."""
    import math

    from harness.report.compare import build_compare, compare_markdown, print_compare

    cmp = build_compare(_compare_runs(tmp_path, (1, 2), spread=0.15), ("decode_tps",))
    rows = cmp.rows
    assert len(rows) == 2 and all(r.ratio.ci_low < r.ratio.ratio < r.ratio.ci_high for r in rows)
    (pooled,) = cmp.overall.values()
    geomean = math.sqrt(rows[0].ratio.ratio * rows[1].ratio.ratio)
    assert pooled.n_a == 2 and pooled.ratio == pytest.approx(geomean)
    assert pooled.ci_low <= geomean <= pooled.ci_high
    assert math.log(pooled.ci_high / pooled.ci_low) >= min(math.log(r.ratio.ci_high / r.ratio.ci_low) for r in rows)
    assert pooled.ci_low < min(r.ratio.ratio for r in rows) and pooled.ci_high > max(r.ratio.ratio for r in rows)
    caveat = "caveat: fewer than 3 workloads pooled"
    assert caveat in compare_markdown(cmp)
    print_compare(cmp)
    assert caveat in " ".join(capsys.readouterr().out.split())
    three = build_compare(_compare_runs(tmp_path / "3", (1, 2, 4), spread=0.15), ("decode_tps",))
    assert "across 3 workloads, decode_tps" in compare_markdown(three) and caveat not in compare_markdown(three)
