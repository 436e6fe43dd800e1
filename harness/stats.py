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
import functools
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


def _stats_of(xs: list[np.ndarray], fn: Callable) -> list[float]:
    """fn(x) of each array, computed for all arrays of one length at once (the same floats as
    one call per array: a row reduction is the same reduction)."""
    out = [math.nan] * len(xs)
    by_len: dict[int, list[int]] = {}
    for i, x in enumerate(xs):
        by_len.setdefault(len(x), []).append(i)
    for n, pos in by_len.items():
        if n == 0:
            continue
        for i, v in zip(pos, fn(np.stack([xs[i] for i in pos]), axis=1).tolist()):
            out[i] = v
    return out


def median(samples: Sequence[float] | None) -> float | None:
    """The median of the finite samples (what Summary.median holds), without an interval."""
    if samples is None:
        return None
    # sorted() in Python, not np.median: rankings ask for tens of thousands of medians of a
    # few samples each, where numpy's call costs ten times the work (issue 21). The same
    # float: the middle value, or the two middle values' sum halved as np.mean does.
    x = sorted(v for v in map(float, (s for s in samples if s is not None)) if math.isfinite(v))
    n = len(x)
    if not n:
        return None
    return x[n // 2] if n % 2 else (x[n // 2 - 1] + x[n // 2]) / 2


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
    return summarize_many([samples], statistic=statistic, confidence=confidence, n_resamples=n_resamples,
                          method=method, seed=seed)[0]


def summarize_many(samples_list: Sequence[Sequence[float] | None], *, statistic: str = "median",
                   confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES, method: str = METHOD,
                   seed: int = SEED) -> list[Summary]:
    """summarize() of many sample lists at once, with the same results bit for bit.

    The percentile interval of the median is computed for all lists of one length in a
    few array operations (harness.stats' engine below: scipy's own resample indices, its
    quantile rule); other statistics and methods go through scipy one list at a time.
    """
    xs = [_clean(s) for s in samples_list]
    out: list[Summary | None] = [None] * len(xs)
    boot: dict[int, list[int]] = {}  # sample length -> positions that need an interval
    for i, x in enumerate(xs):
        n = len(x)
        if n == 0:
            out[i] = Summary(None, None, None, 0, None, None, confidence, method)
        elif n < 2:
            out[i] = Summary(float(x[0]), float(x[0]), 0.0, n, None, None, confidence, method)
        else:
            boot.setdefault(n, []).append(i)
    for n, pos in boot.items():
        X = np.stack([xs[i] for i in pos])  # one row per list
        med, mean, sd = np.median(X, axis=1), np.mean(X, axis=1), np.std(X, ddof=1, axis=1)
        flat = (X.max(axis=1) - X.min(axis=1)) == 0
        todo = [k for k in range(len(pos)) if not flat[k]]
        if statistic == "median" and method == "percentile" and todo:
            lows, highs = _median_intervals(X[todo], n_resamples, confidence, seed)
        else:
            lows, highs = [None] * len(todo), [None] * len(todo)
        ci = dict(zip(todo, zip(lows, highs)))
        for k, i in enumerate(pos):
            m_, a_, s_ = float(med[k]), float(mean[k]), float(sd[k])
            if flat[k]:  # every repetition identical: the interval is that value
                out[i] = Summary(m_, a_, s_, n, float(X[k, 0]), float(X[k, 0]), confidence, method)
                continue
            used = method
            if statistic == "median" and method == "percentile":
                lo, hi = ci[k]
            else:
                fn = _stat_fn(statistic)
                lo, hi, used = _bootstrap((X[k],), lambda a, axis=-1: fn(a, axis=axis), paired=False,
                                          confidence=confidence, n_resamples=n_resamples, method=method, seed=seed)
            out[i] = Summary(m_, a_, s_, n, lo, hi, confidence, used)
    return out  # type: ignore[return-value]


def ratio(a: Sequence[float], b: Sequence[float], *, statistic: str = "median", confidence: float = CONFIDENCE,
          n_resamples: int = N_RESAMPLES, method: str = METHOD, seed: int = SEED) -> Ratio:
    """statistic(a) / statistic(b), with A and B resampled independently (unpaired repetitions)."""
    return ratio_many([(a, b)], statistic=statistic, confidence=confidence, n_resamples=n_resamples,
                      method=method, seed=seed)[0]


def ratio_many(pairs: Sequence[tuple[Sequence[float], Sequence[float]]], *, statistic: str = "median",
               confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES, method: str = METHOD,
               seed: int = SEED) -> list[Ratio]:
    """ratio(a, b) of many pairs at once, with the same results bit for bit (see summarize_many)."""
    fn = _stat_fn(statistic)
    fast = statistic == "median" and method == "percentile"
    out: list[Ratio | None] = [None] * len(pairs)
    two: dict[tuple[int, int], list[int]] = {}  # (len a, len b) -> positions
    one: dict[int, list[tuple[int, float, bool]]] = {}  # length of the resampled side -> (position, constant, a fixed)
    cleaned = [(_clean(a), _clean(b)) for a, b in pairs]
    stat_a = _stats_of([xa for xa, _ in cleaned], fn)
    stat_b = _stats_of([xb for _, xb in cleaned], fn)
    spread_a = _stats_of([xa for xa, _ in cleaned], np.ptp)
    spread_b = _stats_of([xb for _, xb in cleaned], np.ptp)
    points: list[float] = [0.0] * len(pairs)
    for i, (xa, xb) in enumerate(cleaned):
        na, nb = len(xa), len(xb)
        if na == 0 or nb == 0 or stat_b[i] == 0:
            out[i] = Ratio(None, None, None, na, nb, confidence, "independent", statistic)
            continue
        point = points[i] = float(np.float64(stat_a[i]) / np.float64(stat_b[i]))
        if na < 2 and nb < 2:
            out[i] = Ratio(point, None, None, na, nb, confidence, "independent", statistic)
        elif spread_a[i] == 0 and spread_b[i] == 0:
            out[i] = Ratio(point, point, point, na, nb, confidence, "independent", statistic)
        elif not fast:
            lo, hi = _ratio_scipy(xa, xb, fn, confidence, n_resamples, method, seed)
            out[i] = Ratio(point, lo, hi, na, nb, confidence, "independent", statistic)
        elif na < 2 or nb < 2:
            # A side with one sample (a single energy window, say) is a constant: resample the other only.
            a_fixed = na < 2
            var = xb if a_fixed else xa
            one.setdefault(len(var), []).append((i, float((xa if a_fixed else xb)[0]), a_fixed))
        else:
            two.setdefault((na, nb), []).append(i)
    for n, items in one.items():
        X = np.stack([cleaned[i][1] if a_fixed else cleaned[i][0] for i, _, a_fixed in items])
        meds = _boot_medians(X, (n, n_resamples, seed, ()))
        c = np.array([[c] for _, c, _ in items])
        fixed = np.array([[a_fixed] for _, _, a_fixed in items])
        with np.errstate(divide="ignore", invalid="ignore"):
            theta = np.where(fixed, c / meds, meds / c)
        for (i, _, _), (lo, hi) in zip(items, zip(*_percentile_interval(theta, confidence))):
            xa, xb = cleaned[i]
            out[i] = Ratio(points[i], lo, hi, len(xa), len(xb), confidence, "independent", statistic)
    for (na, nb), pos in two.items():
        for start in range(0, len(pos), _CHUNK_ROWS):
            chunk = pos[start:start + _CHUNK_ROWS]
            A = np.stack([cleaned[i][0] for i in chunk])
            B = np.stack([cleaned[i][1] for i in chunk])
            # one generator per pair: A's indices are drawn first, then B's (scipy's order)
            key_a, key_b = (na, n_resamples, seed, ()), (nb, n_resamples, seed, (na,))
            dist = _pair_codes(A, B, key_a, key_b)
            if dist is not None:  # the few values the replicates take, with their counts (issue 21)
                interval = _pair_percentile_interval(*dist, n_resamples, confidence)
            else:
                with np.errstate(divide="ignore", invalid="ignore"):
                    interval = _percentile_interval(_boot_medians(A, key_a) / _boot_medians(B, key_b), confidence)
            for i, lo, hi in zip(chunk, *interval):
                out[i] = Ratio(points[i], lo, hi, na, nb, confidence, "independent", statistic)
    return out  # type: ignore[return-value]


def _ratio_scipy(xa: np.ndarray, xb: np.ndarray, fn: Callable, confidence: float, n_resamples: int, method: str,
                 seed: int) -> tuple[float | None, float | None]:
    """One ratio's interval through scipy (statistics and methods the engine does not cover)."""
    if len(xa) < 2 or len(xb) < 2:
        const, var, a_fixed = (xa, xb, True) if len(xa) < 2 else (xb, xa, False)
        c = float(const[0])
        f = (lambda v, axis=-1: c / fn(v, axis=axis)) if a_fixed else (lambda v, axis=-1: fn(v, axis=axis) / c)
        with np.errstate(divide="ignore", invalid="ignore"):
            lo, hi, _ = _bootstrap((var,), f, paired=False, confidence=confidence, n_resamples=n_resamples,
                                   method=method, seed=seed)
        return lo, hi

    def f2(u, v, axis=-1):
        with np.errstate(divide="ignore", invalid="ignore"):
            return fn(u, axis=axis) / fn(v, axis=axis)

    lo, hi, _ = _bootstrap((xa, xb), f2, paired=False, confidence=confidence, n_resamples=n_resamples,
                           method=method, seed=seed)
    return lo, hi


# --- The bootstrap engine: scipy.stats.bootstrap's percentile interval of the median, for many
# samples at once, identical to it bit for bit.
#
# scipy draws a fresh default_rng(seed) per call, so every sample of one length n is resampled
# with the same index matrix rng.integers(0, n, (n_resamples, n)) (a two-sample call draws B's
# after A's from the same generator). The engine draws each matrix once. The median of resample
# j is then an order statistic of the sample (odd n), or the mean of two (even n), and which one
# depends only on how the sample's values are ordered, not on the values: for every subset S of
# positions, count the resamples with more than k draws in S (a table of 2**n x n_resamples
# booleans, once per matrix); the k-th order statistic of resample j sits at the rank m where the
# m+1 smallest positions first hold more than k draws. Each sample costs a sort of its n values
# and table lookups, where np.median over the resamples costs a partition of n_resamples x n.
# The interval is scipy.stats.quantile's "linear" rule at the two tails, applied to the same
# order statistics of the bootstrap distribution, so the figures are the same floats.

_SUBSET_MAX_N = 12  # above this the subset table grows (2**n rows): resample and take medians directly
_CHUNK_ROWS = 2000  # samples per array operation (a chunk holds rows x n_resamples floats)


@functools.lru_cache(maxsize=256)
def _indices(n: int, n_resamples: int, seed: int, after: tuple[int, ...] = ()) -> np.ndarray:
    """The resample indices scipy.stats.bootstrap uses for a sample of length n (after the
    draws for the earlier samples of lengths `after` in the same call)."""
    rng = np.random.default_rng(seed)
    for m in after:
        rng.integers(0, m, (n_resamples, m))
    idx = rng.integers(0, n, (n_resamples, n))
    idx.flags.writeable = False
    return idx


@functools.lru_cache(maxsize=256)
def _above_table(idx_key: tuple, k: int) -> np.ndarray:
    """[subset mask, resample] -> more than k of the resample's draws fall in the subset."""
    idx = _indices(*idx_key)
    n_res, n = idx.shape
    counts = np.zeros((n_res, n), dtype=np.int32)
    np.add.at(counts, (np.arange(n_res)[:, None], idx), 1)
    bits = ((np.arange(1 << n)[:, None] >> np.arange(n)) & 1).astype(np.int32)  # (2**n, n)
    return (bits @ counts.T) > k  # (2**n, n_resamples)


def _order_ranks(X: np.ndarray, idx_key: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each row of X (sorted values s) and each resample: the rank(s) in s of the
    resample's median order statistic(s). Returns (sorted X, codes per distinct ordering
    (orderings x n_resamples), each row's ordering), codes = m for odd n, m1 * n + m2 for even n."""
    n = X.shape[1]
    order = np.argsort(X, axis=1, kind="stable")
    s = np.take_along_axis(X, order, axis=1)
    perms, inverse = np.unique(order, axis=0, return_inverse=True)
    prefix = np.cumsum(np.left_shift(1, perms), axis=1)  # subset of the m+1 smallest positions
    ks = (n // 2,) if n % 2 else (n // 2 - 1, n // 2)
    codes = None
    for k in ks:
        table = _above_table(idx_key, k)
        m = np.empty((len(perms), table.shape[1]), dtype=np.int16)
        for a in range(0, len(perms), 256):
            m[a:a + 256] = n - table[prefix[a:a + 256]].sum(axis=1, dtype=np.int16)
        codes = m if codes is None else codes * n + m
    return s, codes, inverse.reshape(-1)


def _boot_medians(X: np.ndarray, key: tuple) -> np.ndarray:
    """The median of every resample of every row of X: (rows, n_resamples), equal to
    np.median(X[:, idx], axis=-1) with idx = _indices(*key)."""
    n = X.shape[1]
    if n > _SUBSET_MAX_N:
        idx = _indices(*key)
        out = np.empty((X.shape[0], idx.shape[0]))
        step = max(1, _CHUNK_ROWS // n)
        for a in range(0, X.shape[0], step):
            out[a:a + step] = np.median(X[a:a + step][:, idx], axis=-1)
        return out
    s, perm_codes, inverse = _order_ranks(X, key)
    codes = perm_codes[inverse].astype(np.intp)
    if n % 2:
        return np.take_along_axis(s, codes, axis=1)
    m1, m2 = np.divmod(codes, n)
    return (np.take_along_axis(s, m1, axis=1) + np.take_along_axis(s, m2, axis=1)) / 2


def _median_intervals(X: np.ndarray, n_resamples: int, confidence: float, seed: int) -> tuple[list, list]:
    """Percentile intervals of the median of each row of X (rows of one length n), equal to
    scipy.stats.bootstrap's. The bootstrap distribution of a row takes at most n (odd) or n*n
    (even) distinct values, with counts that depend only on the row's ordering: its order
    statistics come from those counts, without materialising n_resamples values per row."""
    n = X.shape[1]
    if n <= _SUBSET_MAX_N and len(X) > 10 * _CHUNK_ROWS:  # bounded memory: rows x n * n values at a time
        lows, highs = [], []
        for a in range(0, len(X), 10 * _CHUNK_ROWS):
            lo, hi = _median_intervals(X[a:a + 10 * _CHUNK_ROWS], n_resamples, confidence, seed)
            lows += lo
            highs += hi
        return lows, highs
    if n > _SUBSET_MAX_N:
        lows, highs = [], []
        for a in range(0, len(X), _CHUNK_ROWS):
            lo, hi = _percentile_interval(_boot_medians(X[a:a + _CHUNK_ROWS], (n, n_resamples, seed, ())),
                                          confidence)
            lows += lo
            highs += hi
        return lows, highs
    s, perm_codes, inverse = _order_ranks(X, (n, n_resamples, seed, ()))
    if n % 2:
        values = s  # code m -> s[m]
    else:
        values = ((s[:, :, None] + s[:, None, :]) / 2).reshape(len(s), n * n)  # code m1*n+m2
    n_codes = values.shape[1]
    # how many resamples take each code, per distinct ordering (never rows x n_resamples)
    perm_rows = np.arange(len(perm_codes))
    per_perm = np.bincount((perm_codes + (perm_rows * n_codes)[:, None]).ravel(),
                           minlength=len(perm_codes) * n_codes).reshape(len(perm_codes), n_codes)
    counts = per_perm[inverse]
    rows = np.arange(len(X))
    order = np.argsort(values, axis=1, kind="stable")
    sorted_vals = np.take_along_axis(values, order, axis=1)
    cum = np.cumsum(np.take_along_axis(counts, order, axis=1), axis=1)

    def order_stat(t: int) -> np.ndarray:  # the t-th smallest (0-based) bootstrap median of each row
        return sorted_vals[rows, (cum <= t).sum(axis=1)]

    return _interpolate(order_stat, n_resamples, confidence, len(X))


def _quantile_rule(n_resamples: int, confidence: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scipy.stats.quantile's "linear" positions for the two tails, computed as scipy does:
    (j, j + 1, g), the value being (1 - g) * y[j] + g * y[j + 1]."""
    alpha = np.asarray((1 - confidence) / 2, dtype=np.float64)
    p = np.stack([alpha, 1 - alpha])
    n = np.asarray(float(n_resamples))
    jg = p * n + (1 - p)
    jp1 = jg // 1
    j = jp1 - 1
    g = jg % 1
    g[j < 0] = 0
    j = np.clip(j, 0., n - 1)
    jp1 = np.clip(jp1, 0., n - 1)
    return j.astype(np.intp), jp1.astype(np.intp), g


def _interpolate(order_stat: Callable[[int], np.ndarray], n_resamples: int, confidence: float,
                 rows: int) -> tuple[list, list]:
    j, jp1, g = _quantile_rule(n_resamples, confidence)
    ends = []
    for t in range(2):
        with np.errstate(invalid="ignore"):
            ends.append((1 - g[t]) * order_stat(int(j[t])) + g[t] * order_stat(int(jp1[t])))
    lows, highs = [], []
    for lo, hi in zip(ends[0].tolist(), ends[1].tolist()):
        ok = math.isfinite(lo) and math.isfinite(hi)
        lows.append(lo if ok else None)
        highs.append(hi if ok else None)
    return lows, highs


def _percentile_interval(theta: np.ndarray, confidence: float) -> tuple[list, list]:
    """The percentile interval of each row's bootstrap distribution (rows x n_resamples), as
    scipy.stats.quantile computes it (a row holding NaN has none)."""
    j, jp1, g = _quantile_rule(theta.shape[1], confidence)
    kth = sorted({int(v) for v in (*j, *jp1)})
    part = np.partition(theta, kth, axis=1)
    lows, highs = _interpolate(lambda t: part[:, t], theta.shape[1], confidence, len(theta))
    nan = np.isnan(theta).any(axis=1)
    for r in np.flatnonzero(nan):
        lows[r] = highs[r] = None
    return lows, highs


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
    sa, sb = _stats_of([a for a, _ in items], fn), _stats_of([b for _, b in items], fn)
    point = float(np.exp(np.mean([np.log(np.float64(x) / np.float64(y)) for x, y in zip(sa, sb)])))
    if any(len(a) < 2 and len(b) < 2 for a, b in items):
        return Ratio(point, None, None, n, n, confidence, "pooled", "geomean")
    # each workload's sorted bootstrap replicates of its log ratio (row i, column = rank): the
    # replicates its own ratio interval is made of (ratio_many's resamples, shared by every
    # workload of the same repetition counts, as scipy's fixed seed shares them)
    # stored rank-major (ranked[rank, workload]): a pooled replicate reads n workloads at one
    # shared rank, so its reads fall in one row of n floats rather than n rows apart (the gather
    # was most of a 10,000-record compare's pooled intervals; the same values, summed in the
    # same order)
    ranked = np.empty((n_resamples, n))
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (a, b) in enumerate(items):
        groups.setdefault((len(a), len(b)), []).append(i)
    for (na, nb), pos in groups.items():
        for start in range(0, len(pos), _CHUNK_ROWS):
            chunk = pos[start:start + _CHUNK_ROWS]
            XA, XB = np.stack([items[i][0] for i in chunk]), np.stack([items[i][1] for i in chunk])
            key_a, key_b = (na, n_resamples, seed, ()), (nb, n_resamples, seed, (na,) if na >= 2 else ())
            fast = _ranked_log_ratios(XA, XB, key_a, key_b) if statistic == "median" else None
            if fast is None:
                fast = np.sort(np.log(_boot_stat(XA, key_a, statistic) / _boot_stat(XB, key_b, statistic)), axis=1)
            ranked[:, chunk] = fast.T
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n, (n_resamples, n))  # workloads drawn with replacement
    rank = rng.integers(0, n_resamples, (n_resamples, 1))  # one shared rank per replicate
    pooled = ranked[rank, drawn].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(pooled, [tail, 100 - tail])
    return Ratio(point, float(np.exp(lo)), float(np.exp(hi)), n, n, confidence, "pooled", "geomean")


_MAX_PAIR_CODES = 400  # values one row's ratio replicates can take, above which sorting them all is cheaper


def _pair_codes(XA: np.ndarray, XB: np.ndarray, key_a: tuple, key_b: tuple) -> tuple[np.ndarray, np.ndarray] | None:
    """The bootstrap distribution of median(A) / median(B) per row, as the distinct values it
    takes and how many of the n_resamples resamples take each: (values, counts), both
    (rows, k). A row's ratio replicates take one value per pair of median codes (n, or n * n
    for even n, per side), and how many resamples take each pair depends only on the two rows'
    orderings, so it is counted once per pair of orderings (as _median_intervals counts). Each
    value is the same float as _boot_medians(XA) / _boot_medians(XB) of a resample taking it.
    None where the pairs are too many to gain."""
    na, nb = XA.shape[1], XB.shape[1]
    if na > _SUBSET_MAX_N or nb > _SUBSET_MAX_N:
        return None
    ka, kb = (na if na % 2 else na * na), (nb if nb % 2 else nb * nb)
    if ka * kb > _MAX_PAIR_CODES:
        return None

    def code_values(X, key):
        s, perm_codes, inverse = _order_ranks(X, key)
        n = X.shape[1]
        values = s if n % 2 else ((s[:, :, None] + s[:, None, :]) / 2).reshape(len(s), n * n)  # as _boot_medians
        return values, perm_codes.astype(np.intp), inverse

    va, pca, inva = code_values(XA, key_a)
    vb, pcb, invb = code_values(XB, key_b)
    rows, k = len(XA), ka * kb
    with np.errstate(divide="ignore", invalid="ignore"):
        values = (va[:, :, None] / vb[:, None, :]).reshape(rows, k)  # code pair ca * kb + cb
    pairs, pair_of_row = np.unique(inva.astype(np.int64) * len(pcb) + invb, return_inverse=True)
    codes = pca[pairs // len(pcb)] * kb + pcb[pairs % len(pcb)]  # (pairs of orderings, n_resamples)
    counts = np.bincount((codes + (np.arange(len(pairs)) * k)[:, None]).ravel(),
                         minlength=len(pairs) * k).reshape(len(pairs), k)[pair_of_row.reshape(-1)]
    return values, counts


def _ranked_log_ratios(XA: np.ndarray, XB: np.ndarray, key_a: tuple, key_b: tuple) -> np.ndarray | None:
    """np.sort(np.log(_boot_medians(XA, key_a) / _boot_medians(XB, key_b)), axis=1), the same
    floats, without sorting n_resamples values per row (issue 21: that sort was a sixth of a
    10,000-record compare): the few values a row's replicates take (_pair_codes) are sorted and
    each repeated as many times as resamples take it. None where the pairs are too many to gain."""
    dist = _pair_codes(XA, XB, key_a, key_b)
    if dist is None:
        return None
    values, counts = dist
    values = np.log(values)
    order = np.argsort(values, axis=1)
    ranked = np.repeat(np.take_along_axis(values, order, axis=1).ravel(),
                       np.take_along_axis(counts, order, axis=1).ravel())
    return ranked.reshape(len(XA), -1)


def _pair_percentile_interval(values: np.ndarray, counts: np.ndarray, n_resamples: int,
                              confidence: float) -> tuple[list, list]:
    """_percentile_interval of the replicates _pair_codes describes, read off the sorted
    distinct values and their cumulative counts (no partition of n_resamples values per row):
    the same order statistics, so the same floats; a row where some resample's ratio is NaN
    has no interval, as there."""
    rows = np.arange(len(values))
    order = np.argsort(values, axis=1, kind="stable")  # NaN last, as a partition places it
    sorted_vals = np.take_along_axis(values, order, axis=1)
    cum = np.cumsum(np.take_along_axis(counts, order, axis=1), axis=1)

    def order_stat(t: int) -> np.ndarray:  # the t-th smallest (0-based) replicate of each row
        return sorted_vals[rows, (cum <= t).sum(axis=1)]

    lows, highs = _interpolate(order_stat, n_resamples, confidence, len(values))
    for r in np.flatnonzero((np.isnan(values) & (counts > 0)).any(axis=1)):
        lows[r] = highs[r] = None
    return lows, highs


def _boot_stat(X: np.ndarray, key: tuple, statistic: str) -> np.ndarray:
    """The statistic of every resample of every row of X (rows x n_resamples)."""
    if statistic == "median":
        return _boot_medians(X, key)
    return np.mean(X[:, _indices(*key)], axis=-1)


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
