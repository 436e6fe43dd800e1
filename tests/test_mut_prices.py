"""Kills mutants of the cost formula (harness/report/prices.py, issue 19). Utilisation 0.25
tells u, 1/u and 1-u apart (0.5 would not: 1-u = u there). Expected values by hand."""
import pytest

from harness.cells import load_cells
from harness.records import MeterEnergy
from harness.report.prices import HardwareMatch, HardwarePrice, Prices, cost_per_million
from tests.test_claims import record, write_run

YEAR_S = 365.25 * 24 * 3600


@pytest.fixture
def cell(tmp_path):
    r = record(backend="acc", device="cpu", batch=4, gen_len=32, tpj=10.0)
    # e2e samples chosen by hand: median 2.0 s -> T = 4 x 32 / 2 = 64 tokens/s
    r["metrics"]["e2e_s"]["samples"] = [1.0, 2.0, 2.0, 3.0, 5.0]
    (c,) = load_cells([write_run(tmp_path, "r", [r])])
    return c


def meter(tpj=10.0, idle_w=40.0, method="counter"):
    return MeterEnergy(meter="m", method=method, quality="estimate" if method == "estimate" else "ok",
                       tokens_per_joule_gross=tpj, idle_w=idle_w)


def prices(u=0.25, hw_u=None, pue=1.5, kwh=0.3, backend="acc"):
    return Prices(electricity_per_kwh=kwh, utilisation=u, pue=pue, currency="EUR",
                  hardware=[HardwarePrice(match=HardwareMatch(backend=backend), price=10000.0, lifetime_years=2.0,
                                          utilisation=hw_u)])


def test_cost_with_utilisation_a_quarter(cell):
    T, u = 64.0, 0.25
    c = cost_per_million(cell, meter(), prices())
    assert c.hardware == pytest.approx(10000.0 / (2.0 * YEAR_S * u * T) * 1e6, rel=1e-12)
    busy_j = 1e6 / 10.0
    idle_j = 40.0 * (1e6 / T) * (1 - u) / u  # 40 W x 15625 s x 3
    assert c.energy == pytest.approx((busy_j + idle_j) * 1.5 / 3.6e6 * 0.3, rel=1e-12)
    assert c.total == pytest.approx(c.hardware + c.energy, rel=1e-12)
    assert c.notes == []


def test_hardware_utilisation_overrides_the_files(cell):
    T = 64.0
    c = cost_per_million(cell, meter(), prices(u=0.25, hw_u=0.8))
    assert c.hardware == pytest.approx(10000.0 / (2.0 * YEAR_S * 0.8 * T) * 1e6, rel=1e-12)
    idle_j = 40.0 * (1e6 / T) * 0.2 / 0.8
    assert c.energy == pytest.approx((1e5 + idle_j) * 1.5 / 3.6e6 * 0.3, rel=1e-12)


def test_unknown_idle_power_is_not_costed_and_said(cell):
    c = cost_per_million(cell, meter(idle_w=None), prices())
    assert c.energy == pytest.approx(1e5 * 1.5 / 3.6e6 * 0.3, rel=1e-12)
    assert c.notes == ["idle power unknown: idle time not costed"]


def test_zero_idle_power_is_known_and_free(cell):
    c = cost_per_million(cell, meter(idle_w=0.0), prices())
    assert c.energy == pytest.approx(1e5 * 1.5 / 3.6e6 * 0.3, rel=1e-12)
    assert c.notes == []


def test_estimate_is_labelled(cell):
    c = cost_per_million(cell, meter(method="estimate"), prices())
    assert c.notes == ["energy is an ESTIMATE"] and c.energy is not None


def test_no_energy_figure_leaves_total_unknown(cell):
    for m in (None, meter(tpj=None), meter(tpj=0.0)):
        c = cost_per_million(cell, m, prices())
        assert c.energy is None and c.total is None and c.hardware is not None
        assert c.notes == ["no energy figure"]


def test_no_matching_hardware_leaves_total_unknown_but_uses_the_files_utilisation(cell):
    c = cost_per_million(cell, meter(), prices(backend="other"))
    assert c.hardware is None and c.total is None
    assert c.notes == ["no hardware price matches"]
    idle_j = 40.0 * (1e6 / 64.0) * 0.75 / 0.25
    assert c.energy == pytest.approx((1e5 + idle_j) * 1.5 / 3.6e6 * 0.3, rel=1e-12)


def test_invalid_cell_has_no_cost(tmp_path):
    r = record(backend="acc", device="cpu", tpj=10.0, accuracy=False, status="invalid")
    (c,) = load_cells([write_run(tmp_path, "r", [r])])
    out = cost_per_million(c, meter(), prices())
    assert (out.hardware, out.energy, out.total) == (None, None, None)
    assert out.notes == ["no valid timing"]
