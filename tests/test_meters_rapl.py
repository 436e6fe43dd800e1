"""RAPL meter against a fake powercap tree on disk (real files, real reads)."""

import logging
import os
import time
from pathlib import Path

import pytest

from harness.meters import MeterError, RaplMeter, build_meters

MAX = 262_143_328_850  # a real package max_energy_range_uj


def zone(root: Path, rel: str, name: str, energy: int, max_range: int = MAX) -> Path:
    d = root / rel
    d.mkdir(parents=True)
    (d / "name").write_text(name + "\n")
    (d / "energy_uj").write_text(f"{energy}\n")
    (d / "max_energy_range_uj").write_text(f"{max_range}\n")
    return d


def set_energy(d: Path, uj: int) -> None:
    """Atomic, like sysfs: a background reader never sees a half-written file."""
    tmp = d / ".energy_uj.tmp"
    tmp.write_text(f"{uj}\n")
    os.replace(tmp, d / "energy_uj")


@pytest.fixture
def tree(tmp_path):
    """Like a two-level Intel server sysfs: zones nested and also listed flat."""
    root = tmp_path / "powercap"
    pkg = zone(root, "intel-rapl:0", "package-0", 1_000_000)
    core = zone(root, "intel-rapl:0/intel-rapl:0:0", "core", 500_000)
    dram = zone(root, "intel-rapl:0/intel-rapl:0:1", "dram", 2_000_000)
    os.symlink(root / "intel-rapl:0/intel-rapl:0:0", root / "intel-rapl:0:0")
    os.symlink(root / "intel-rapl:0/intel-rapl:0:1", root / "intel-rapl:0:1")
    zone(root, "intel-rapl:1", "psys", 7_000_000)                  # overlaps everything
    zone(root, "intel-rapl-mmio:0", "package-0", 3_000_000)       # MMIO duplicate of the package
    return {"root": root, "pkg": pkg, "core": core, "dram": dram}


def meter(root, **kw) -> RaplMeter:
    return RaplMeter({"root": str(root), "period_s": 0, **kw})


def by_name(readings):
    return {r.meter: r for r in readings}


def test_reports_package_and_dram_only_no_double_counting(tree):
    m = meter(tree["root"])
    m.start()
    assert m.available
    m.begin_window("w")
    set_energy(tree["pkg"], 1_000_000 + 5_000_000)
    set_energy(tree["core"], 500_000 + 4_000_000)      # inside the package figure: must not be added
    set_energy(tree["dram"], 2_000_000 + 1_500_000)
    rs = by_name(m.end_window("w"))
    assert set(rs) == {"rapl:package-0", "rapl:dram"}
    assert rs["rapl:package-0"].joules == pytest.approx(5.0)
    assert rs["rapl:package-0"].scope == "cpu-package"
    assert rs["rapl:dram"].joules == pytest.approx(1.5)
    assert rs["rapl:dram"].scope == "dram"
    assert all(r.method == "counter" and r.quality == "ok" for r in rs.values())
    assert any("psys" in s for s in m.skipped) and any("core" in s for s in m.skipped)


def test_domains_option_limits_zones(tree):
    m = meter(tree["root"], domains=["package"])
    m.start()
    m.begin_window("w")
    assert [r.meter for r in m.end_window("w")] == ["rapl:package-0"]


def test_wrap_around_between_edge_reads(tree):
    root = tree["root"]
    set_energy(tree["pkg"], 0)
    (tree["pkg"] / "max_energy_range_uj").write_text("1000000000\n")
    m = meter(root, domains=["package"])
    m.start()
    set_energy(tree["pkg"], 999_000_000)
    m.begin_window("w")
    set_energy(tree["pkg"], 2_000_000)                 # wrapped
    (r,) = m.end_window("w")
    assert r.joules == pytest.approx(3.0)              # 1.0 J to the top + 2.0 J after
    assert r.telemetry["wraps_total"] == 1


def test_several_wraps_in_one_window(tree):
    """Two wraps inside one window: edge reads alone would see one. The meter's
    poll (here called by hand, as its background sampler does every period_s)
    accumulates each step."""
    (tree["pkg"] / "max_energy_range_uj").write_text("1000000\n")
    set_energy(tree["pkg"], 500_000)
    m = meter(tree["root"], domains=["package"])
    m.start()
    m.begin_window("w")
    for v in (900_000, 100_000, 900_000, 100_000):
        time.sleep(0.01)
        set_energy(tree["pkg"], v)
        m._poll()
    (r,) = m.end_window("w")
    assert r.joules == pytest.approx(0.4 + 0.2 + 0.8 + 0.2)
    assert r.n_updates == 4 and r.telemetry["wraps_total"] == 2
    assert 0.005 < r.update_period_s < 0.5


def test_background_poll_counts_updates_and_keeps_a_timeline(tree):
    m = RaplMeter({"root": str(tree["root"]), "domains": ["package"], "period_s": 0.005})
    m.start()
    try:
        m.begin_window("w")
        deadline = time.time() + 5
        v = 1_000_000
        while (m.live_updates("w") or 0) < 3 and time.time() < deadline:
            v += 100_000
            set_energy(tree["pkg"], v)
            time.sleep(0.01)
        (r,) = m.end_window("w")
    finally:
        m.stop()
    assert r.n_updates >= 3
    assert r.joules == pytest.approx((v - 1_000_000) / 1e6)
    tl = m.timeline(since=r.t_start)
    assert tl and {"t", "meter", "watts", "energy_j"} <= set(tl[0]) and tl[0]["meter"] == "rapl:package-0"


def test_unreadable_energy_file_is_unavailable_said_once(tree, caplog):
    # Tests run as root, where chmod 000 does not stop a read; a directory in
    # place of the file fails to open for anyone, like a root-only file for a user.
    for d in (tree["pkg"], tree["dram"]):
        (d / "energy_uj").unlink()
        (d / "energy_uj").mkdir()
    with caplog.at_level(logging.WARNING, logger="harness.meters"):
        m1, m2 = meter(tree["root"]), meter(tree["root"])
        m1.start()
        m2.start()
    assert not m1.available
    assert "energy_uj" in m1.reason and "intel-rapl:0" in m1.reason
    warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(warnings) == 1
    m1.begin_window("w")
    (r,) = m1.end_window("w")
    assert r.joules is None and r.quality == "unavailable" and r.reason == m1.reason
    assert r.scope == "cpu-package"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads mode-000 files")
def test_root_only_file_as_non_root(tree):
    os.chmod(tree["pkg"] / "energy_uj", 0o000)
    os.chmod(tree["dram"] / "energy_uj", 0o000)
    m = meter(tree["root"])
    m.start()
    assert not m.available and "permission denied" in m.reason


def test_one_zone_unreadable_other_measured(tree):
    (tree["dram"] / "energy_uj").unlink()
    (tree["dram"] / "energy_uj").mkdir()
    m = meter(tree["root"])
    m.start()
    assert m.available
    m.begin_window("w")
    set_energy(tree["pkg"], 3_000_000)
    rs = by_name(m.end_window("w"))
    assert rs["rapl:package-0"].joules == pytest.approx(2.0)
    assert rs["rapl:dram"].joules is None and "energy_uj" in rs["rapl:dram"].reason


def test_permission_change_mid_window(tree):
    m = meter(tree["root"], domains=["package"])
    m.start()
    m.begin_window("w")
    (tree["pkg"] / "energy_uj").unlink()
    (tree["pkg"] / "energy_uj").mkdir()
    (r,) = m.end_window("w")
    assert r.joules is None and r.quality == "unavailable"
    assert "inside the window" in r.reason


def test_absent_powercap(tmp_path):
    m = meter(tmp_path / "nope")
    m.start()
    assert not m.available and "powercap" in m.reason
    m2 = meter(tmp_path)          # exists but has no zones
    m2.start()
    assert not m2.available and "intel-rapl" in m2.reason


def test_options_validated():
    with pytest.raises(MeterError, match="domains"):
        build_meters([{"type": "rapl", "domains": ["gpu"]}])
    with pytest.raises(MeterError, match=r"meters\[0\] \(rapl\): perod_s: unknown key \(did you mean 'period_s'\?\)"):
        build_meters([{"type": "rapl", "perod_s": 1}])
