"""The device catalog: the shipped files, and bad user files reported by file, line and key
through the real CLI (exit 2)."""
from dataclasses import fields, is_dataclass

from harness.catalog import Sourced, device_name, load_catalog
from tests.bound_cli_helper import run_cli


def _numbers(obj, path=""):
    """Every Sourced figure under a catalog object, with its key path."""
    if isinstance(obj, Sourced):
        yield path, obj
    elif is_dataclass(obj):
        for f in fields(obj):
            yield from _numbers(getattr(obj, f.name), f"{path}.{f.name}")


def test_shipped_catalog_every_number_has_a_source():
    cat = load_catalog()
    assert {"h100-sxm", "h200", "rngd", "atom", "rebel", "pim-bank", "pim-bankgroup", "dev-epyc-2core"} <= set(cat.devices)
    n = 0
    for d in cat.devices.values():
        for path, s in _numbers(d):
            assert s.value > 0 and len(s.source.strip()) > 5, (d.name, path)
            n += 1
    assert n >= 40
    # the figures, as catalogued
    assert cat.get("pim-bank").memory.pj_per_bit.value == 0.55
    assert cat.get("pim-bankgroup").memory.pj_per_bit.value == 1.56
    assert cat.get("h100-sxm").memory.pj_per_bit.value == 3.59
    assert cat.get("rngd").peak_flops("bf16") == 256e12


def test_measured_cells_map_to_catalog_devices_by_name():
    cat = load_catalog()
    inv = {"gpus": [{"index": 0, "name": "NVIDIA H100 80GB HBM3"}, {"index": 1, "name": "NVIDIA H200"},
                    {"index": 2, "name": "NVIDIA H100 PCIe"}], "cpu": {"model": "AMD EPYC 7B13"}, "hostname": "h200-box"}
    assert cat.for_name(device_name("cuda:0", inv)).name == "h100-sxm"
    assert cat.for_name(device_name("cuda:1", inv)).name == "h200"
    assert cat.for_name(device_name("cuda:2", inv)) is None  # another part: no bound borrowed
    assert cat.for_name(device_name("cpu", inv)) is None  # not by the host name "h200-box" either
    assert cat.for_name(device_name("cuda:7", inv)) is None


BAD = """\
devices:
  - name: mine
    label: my card
    kind: gpu
    memory:
      kind: HBM
      bandwidth_gb_s: {value: 2000}
      pj_per_bit: {value: -1, source: "x"}
    idle_watts: {value: 3, source: "x"}
  - name: h100-sxm
    label: again
    kind: tpu
    memory: {kind: HBM}
"""


def test_bad_device_file_every_problem_with_file_line_key(tmp_path, capsys):
    d = tmp_path / "devs"
    d.mkdir()
    f = d / "mine.yaml"
    f.write_text(BAD)
    assert run_cli(["bound", "--devices", str(d)]) == 2
    err = capsys.readouterr().err
    assert f"{f}:7: devices[0].memory.bandwidth_gb_s.source: required key missing" in err
    assert f"{f}:8: devices[0].memory.pj_per_bit.value: expected a finite number > 0" in err
    assert f"{f}:9: devices[0].idle_watts: unknown key (did you mean 'idle_w'?)" in err
    assert f"{f}:12: devices[1].kind: expected one of gpu, npu, pim, cpu" in err
    assert f"{f}:10: devices[1].name: device 'h100-sxm' is already defined at" in err
    assert "Traceback" not in err


def test_claims_file_devices_key_is_checked_too(tmp_path, capsys):
    (tmp_path / "devs").mkdir()
    (tmp_path / "devs" / "mine.yaml").write_text(BAD)
    claims = tmp_path / "claims.yaml"
    claims.write_text("devices: devs\nclaims:\n  - {metric: j_per_token, subject: {catalog: mine}, baseline: "
                      "{catalog: h100-sxm}, workload: {model: tiny, batch: 1, prompt_len: 8, gen_len: 8}, at_least: 2}\n")
    assert run_cli(["verify", str(claims)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'devs' / 'mine.yaml'}:7: devices[0].memory.bandwidth_gb_s.source" in err


def test_claims_naming_unknown_catalog_device_or_external_figure(tmp_path, capsys):
    claims = tmp_path / "claims.yaml"
    claims.write_text("claims:\n"
                      "  - metric: j_per_token\n"
                      "    subject: {catalog: pim-bnak}\n"
                      "    baseline: {external: nope}\n"
                      "    workload: {model: tiny, batch: 1, prompt_len: 8, gen_len: 8}\n"
                      "    at_least: 2\n")
    assert run_cli(["verify", str(claims)]) == 2
    err = capsys.readouterr().err
    assert f"{claims}:3: claims[0].subject.catalog: not a catalog device" in err
    assert f"{claims}:4: claims[0].baseline.external: no figure of that name" in err
