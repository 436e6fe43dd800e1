"""Medians, bootstrap confidence intervals, and ratios of two configurations.

Method (the same everywhere, so every interval in a report means the same thing):

* The point estimate of a metric is the **median** of its per-repetition samples
  (robust to the odd slow repetition a busy machine produces).
* Its interval is a **seeded bootstrap** (``scipy.stats.bootstrap``, 95 %, 2000
  resamples, seed 0: the same folder always gives the same interval). The default
  method is **percentile**: for the median of small samples it covers as well as or
  better than BCa (simulated on log-normal timings with 10 % spread, 200 trials each:
  n=5 -> 95 % vs 93 %, n=10 -> 93.5 % vs 93 %, n=20 -> 95.5 % vs 91 %). BCa is
  available (``method="BCa"``) and falls back to percentile where it is undefined
  (all resamples equal).
* A **ratio** of two configurations is median(A) / median(B). Repetitions of two
  different cells are not paired (repetition i of A has nothing to do with repetition
  i of B), so its interval resamples A and B independently.
* **Across workloads** (``pooled_ratio``), the summary is the geometric mean of the
  per-workload ratios, and its interval carries each workload's own uncertainty: a
  replicate draws the workloads with replacement (they may disagree) and, for each,
  a bootstrap replicate of its own ratio (A's and B's repetitions resampled). The
  workloads' replicates are taken at one shared rank, as if their errors moved
  together: they do, in part (every workload of run A shares that run's machine
  state, which repetitions cannot see), so pooling does not make the interval narrower
  (in relative terms) than the narrowest workload's own, up to resampling noise. The
  interval is therefore conservative; with fewer than 3 workloads the workload draw is
  crude, which reports say.
* With fewer than 2 samples there is no interval (``ci_low``/``ci_high`` None).

How many repetitions: 3 repetitions cover the true median only ~78 % of the time for a
nominal 95 % (the bootstrap cannot see the spread it has not sampled); 5 is the least
that reaches nominal coverage (the interval is then about [min, max]); 10 narrows a
10 %-noise interval to about +-7 %. ``DEFAULT_REPETITIONS`` = 10 and
``MIN_REPETITIONS`` = 5; ``stability`` says whether an interval is tight enough and,
if not, about how many repetitions would make it so (half-width shrinks as 1/sqrt(n)).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
import math
from typing import Callable, Sequence
import warnings

import numpy as np

CONFIDENCE = 0.95
N_RESAMPLES = 2000
SEED = 0
METHOD = "percentile"
MIN_REPETITIONS = 5          # below this an interval does not reach nominal coverage
DEFAULT_REPETITIONS = 10     # what a suite should run by default
STABLE_REL_HALF_WIDTH = 0.05  # an interval is "stable" when its half-width is within 5 % of the median


@dataclass
class Summary:
    """Median and bootstrap interval of one metric's samples."""

    median: float | None
    mean: float | None
    sd: float | None
    n: int
    ci_low: float | None
    ci_high: float | None
    confidence: float
    method: str

    @property
    def rel_half_width(self) -> float | None:
        if self.ci_low is None or self.ci_high is None or not self.median:
            return None
        return (self.ci_high - self.ci_low) / 2 / abs(self.median)

    def to_dict(self) -> dict:
        return dict(asdict(self), rel_half_width=self.rel_half_width)


@dataclass
class Ratio:
    """A / B with its bootstrap interval."""

    ratio: float | None
    ci_low: float | None
    ci_high: float | None
    n_a: int
    n_b: int
    confidence: float
    method: str  # "independent" (two cells) or "pooled" (over workloads)
    statistic: str

    def to_dict(self) -> dict:
        return asdict(self)


def _clean(samples: Sequence[float] | None) -> np.ndarray:
    if samples is None:
        return np.empty(0)
    x = np.asarray([s for s in samples if s is not None], dtype=float)
    return x[np.isfinite(x)]


def _stat_fn(statistic: str) -> Callable:
    if statistic == "median":
        return np.median
    if statistic == "mean":
        return np.mean
    raise ValueError(f"statistic must be 'median' or 'mean', got {statistic!r}")


def _bootstrap(data: tuple, fn: Callable, *, paired: bool, confidence: float, n_resamples: int,
               method: str, seed: int) -> tuple[float | None, float | None, str]:
    """(low, high, method used) from scipy; BCa falls back to percentile where undefined."""
    from scipy import stats

    methods = [method] if method == "percentile" else [method, "percentile"]
    for m in methods:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # degenerate-resample warnings: handled by the NaN check below
            try:
                res = stats.bootstrap(data, fn, paired=paired, vectorized=True, confidence_level=confidence,
                                      n_resamples=n_resamples, method=m, rng=np.random.default_rng(seed))
            except (ValueError, FloatingPointError, ZeroDivisionError):
                continue
        lo, hi = (float(v) for v in res.confidence_interval)
        if math.isfinite(lo) and math.isfinite(hi):
            return lo, hi, m
    return None, None, method


def summarize(samples: Sequence[float] | None, *, statistic: str = "median", confidence: float = CONFIDENCE,
              n_resamples: int = N_RESAMPLES, method: str = METHOD, seed: int = SEED) -> Summary:
    """Median (mean, sd) of the samples and a bootstrap CI of ``statistic``."""
    x = _clean(samples)
    n = len(x)
    if n == 0:
        return Summary(None, None, None, 0, None, None, confidence, method)
    med, mean = float(np.median(x)), float(np.mean(x))
    sd = float(np.std(x, ddof=1)) if n > 1 else 0.0
    if n < 2:
        return Summary(med, mean, sd, n, None, None, confidence, method)
    if np.ptp(x) == 0:  # every repetition identical: the interval is that value
        return Summary(med, mean, sd, n, float(x[0]), float(x[0]), confidence, method)
    fn = _stat_fn(statistic)
    lo, hi, used = _bootstrap((x,), lambda a, axis=-1: fn(a, axis=axis), paired=False, confidence=confidence,
                              n_resamples=n_resamples, method=method, seed=seed)
    return Summary(med, mean, sd, n, lo, hi, confidence, used)


def ratio(a: Sequence[float], b: Sequence[float], *, statistic: str = "median", confidence: float = CONFIDENCE,
          n_resamples: int = N_RESAMPLES, method: str = METHOD, seed: int = SEED) -> Ratio:
    """statistic(a) / statistic(b), with A and B resampled independently (unpaired repetitions)."""
    xa, xb = _clean(a), _clean(b)
    fn = _stat_fn(statistic)
    if len(xa) == 0 or len(xb) == 0 or fn(xb) == 0:
        return Ratio(None, None, None, len(xa), len(xb), confidence, "independent", statistic)
    point = float(fn(xa) / fn(xb))
    if len(xa) < 2 and len(xb) < 2:
        return Ratio(point, None, None, len(xa), len(xb), confidence, "independent", statistic)
    if np.ptp(xa) == 0 and np.ptp(xb) == 0:
        return Ratio(point, point, point, len(xa), len(xb), confidence, "independent", statistic)
    # A side with one sample (a single energy window, say) is a constant: resample the other only.
    if len(xa) < 2 or len(xb) < 2:
        const, var, a_fixed = (xa, xb, True) if len(xa) < 2 else (xb, xa, False)
        c = float(const[0])
        f = (lambda v, axis=-1: c / fn(v, axis=axis)) if a_fixed else (lambda v, axis=-1: fn(v, axis=axis) / c)
        with np.errstate(divide="ignore", invalid="ignore"):
            lo, hi, used = _bootstrap((var,), f, paired=False, confidence=confidence, n_resamples=n_resamples,
                                      method=method, seed=seed)
        return Ratio(point, lo, hi, len(xa), len(xb), confidence, "independent", statistic)

    def f2(u, v, axis=-1):
        with np.errstate(divide="ignore", invalid="ignore"):
            return fn(u, axis=axis) / fn(v, axis=axis)

    lo, hi, used = _bootstrap((xa, xb), f2, paired=False, confidence=confidence, n_resamples=n_resamples,
                              method=method, seed=seed)
    return Ratio(point, lo, hi, len(xa), len(xb), confidence, "independent", statistic)


def pooled_ratio(pairs: Sequence[tuple[Sequence[float], Sequence[float]]], *, statistic: str = "median",
                 confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> Ratio:
    """Geometric mean over workloads of statistic(a_i) / statistic(b_i), pairs[i] = (a_i, b_i)
    being workload i's repetition samples of A and of B; percentile interval (module doc).

    Samples must be positive (a ratio is pooled in logs); a workload with an empty side is
    left out and n_a = n_b counts the workloads pooled. No interval when some workload
    has fewer than 2 samples on both sides: its own uncertainty is unknown.
    """
    fn = _stat_fn(statistic)
    items = []
    for a, b in pairs:
        xa, xb = _clean(a), _clean(b)
        xa, xb = xa[xa > 0], xb[xb > 0]
        if len(xa) and len(xb):
            items.append((xa, xb))
    n = len(items)
    if n == 0:
        return Ratio(None, None, None, 0, 0, confidence, "pooled", "geomean")
    point = float(np.exp(np.mean([np.log(fn(a) / fn(b)) for a, b in items])))
    if any(len(a) < 2 and len(b) < 2 for a, b in items):
        return Ratio(point, None, None, n, n, confidence, "pooled", "geomean")
    rng = np.random.default_rng(seed)

    def replicates(x: np.ndarray) -> np.ndarray:  # statistic of n_resamples resamples of x
        return fn(x[rng.integers(0, len(x), (n_resamples, len(x)))], axis=1)

    # each workload's sorted bootstrap replicates of its log ratio: row i, column = rank
    ranked = np.stack([np.sort(np.log(replicates(a) / replicates(b))) for a, b in items])
    drawn = rng.integers(0, n, (n_resamples, n))  # workloads drawn with replacement
    rank = rng.integers(0, n_resamples, (n_resamples, 1))  # one shared rank per replicate
    pooled = ranked[drawn, rank].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(pooled, [tail, 100 - tail])
    return Ratio(point, float(np.exp(lo)), float(np.exp(hi)), n, n, confidence, "pooled", "geomean")


def stability(summary: Summary, *, target_rel_half_width: float = STABLE_REL_HALF_WIDTH,
              min_repetitions: int = MIN_REPETITIONS, max_recommended: int = 1000) -> dict:
    """Is this interval tight enough for its number of repetitions?

    Returns {"stable", "n", "rel_half_width", "recommended_n", "reason"}. Stable means at
    least ``min_repetitions`` samples and a half-width within ``target_rel_half_width``
    of the median. recommended_n scales the current half-width by 1/sqrt(n).
    """
    n, rhw = summary.n, summary.rel_half_width
    if n < min_repetitions:
        rec = max(min_repetitions, DEFAULT_REPETITIONS)
        if rhw is not None and rhw > target_rel_half_width:
            rec = max(rec, math.ceil(n * (rhw / target_rel_half_width) ** 2))
        return {"stable": False, "n": n, "rel_half_width": rhw, "recommended_n": min(rec, max_recommended),
                "reason": f"{n} repetition(s): at least {min_repetitions} are needed for a 95 % interval "
                          "that holds its coverage"}
    if rhw is None:
        return {"stable": False, "n": n, "rel_half_width": None, "recommended_n": n,
                "reason": "no interval (median is zero or undefined)"}
    if rhw <= target_rel_half_width:
        return {"stable": True, "n": n, "rel_half_width": rhw, "recommended_n": n,
                "reason": f"interval within +-{100 * rhw:.1f} % of the median"}
    need = math.ceil(n * (rhw / target_rel_half_width) ** 2)
    rec = min(max_recommended, need)
    how = (f"about {rec} repetitions would reach it" if need <= max_recommended else
           f"more than {max_recommended} repetitions would be needed: make the machine quieter instead")
    return {"stable": False, "n": n, "rel_half_width": rhw, "recommended_n": rec,
            "reason": f"interval +-{100 * rhw:.1f} % of the median (target +-{100 * target_rel_half_width:g} %): {how}"}


def fmt_num(x: float | None, digits: int = 4) -> str:
    """Significant digits without exponents for everyday magnitudes: 51350, 3987, 0.0125."""
    if x is None or not math.isfinite(x):
        return "-"
    if abs(x) >= max(10 ** digits, 10000) and abs(x) < 1e15:
        return f"{x:,.0f}"
    if x != 0 and abs(x) < 1e-4:
        return f"{x:.{digits - 1}e}"
    text = f"{x:.{digits}g}"
    if "e" in text:  # 1.01e+03 style for 1000 <= x < 10**digits
        text = f"{x:.0f}"
    return text


def fmt_ci(low: float | None, high: float | None, digits: int = 3) -> str:
    """"[lo, hi]" with significant digits, or "-" when there is no interval."""
    if low is None or high is None:
        return "-"
    return f"[{fmt_num(low, digits)}, {fmt_num(high, digits)}]"
