"""The statistics behind the claims' verdicts, each one scipy test with its effect size and n.

Every function returns an :class:`Evidence`: the effect size in the measurement's units, the number
of units it rests on, and two p-values, ``p_for`` (a small value supports the claim) and
``p_against`` (a small value contradicts it). :mod:`.verdicts` turns them into outcomes after Holm's
correction. The four kinds:

* :func:`blocked_trend`: Spearman's rho of a measurement against a setting (the batch size), computed
  within each seed and averaged; its p-value permutes the measurement within seeds, so a constant
  offset between seeds neither hides nor fakes a trend (:func:`pooled_trend` is the pooled version,
  kept to show what pooling does).
* :func:`paired_difference`: treatment minus control on units that share every other setting (seed,
  batch size, ...); the effect is the mean difference, the test Wilcoxon's signed-rank test.
* :func:`paired_equivalence`: the same pairs, tested for equivalence within a margin (Schuirmann's two
  one-sided t-tests, TOST), or for one side of it (no gain / no loss).
* :func:`trend_equivalence`: the change of a measurement across the batch-size range from a linear fit
  on log2(batch size) with one intercept per seed, tested for equivalence within a margin (TOST).

Permutation tests are seeded (:data:`PERMUTATION_SEED`) and exact when the permutations are few.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

#: Resamples of a randomized permutation test; below :data:`EXACT_UP_TO` distinct permutations the test
#: enumerates them all instead (one seed of 6 batch sizes has 6! = 720).
N_RESAMPLES = 9999
EXACT_UP_TO = 50_000
#: Fixed seed of the randomized permutation tests: the same runs always give the same p-value.
PERMUTATION_SEED = 0
#: Resampled values held at once per block by a randomized test (8 bytes each: 32 MB).
_CHUNK_ELEMENTS = 4_000_000
#: Two-sided confidence level of the intervals shown with equivalence tests: 1 - 2 alpha, the interval
#: whose inclusion in the margin is the TOST at alpha = 0.05.
CI_LEVEL = 0.90


@dataclass(frozen=True)
class Evidence:
    """One sub-test's result, before the claim's multiple-comparison correction."""

    effect: float        # the effect size, in the measurement's units (log units for the eigenvalue)
    n: int               # units the statistic rests on (runs, or pairs of runs)
    p_for: float         # p-value of the test whose rejection supports the claim
    p_against: float     # p-value of the test whose rejection contradicts it
    summary: str         # the effect, its n and the test, in words
    note: str = ""       # why it cannot decide, when it cannot
    floor: float = 0.0   # the smallest p-value the test can give with this n (exact rank tests)

    @property
    def p(self) -> float:
        """The p-value that decides: the smaller of the two (they cannot both be small)."""
        return min(self.p_for, self.p_against)


def no_evidence(n: int, summary: str, note: str) -> Evidence:
    return Evidence(math.nan, n, 1.0, 1.0, summary, note)


def _directional(effect: float, p_two_sided: float, sign: int) -> tuple[float, float]:
    """(p_for, p_against) of a two-sided test whose effect was claimed to have ``sign``."""
    if not np.isfinite(effect) or effect == 0 or not np.isfinite(p_two_sided):
        return 1.0, 1.0
    return (p_two_sided, 1.0) if (effect > 0) == (sign > 0) else (1.0, p_two_sided)


# --------------------------------------------------------------------------- trends: Spearman, blocked


def _rank_correlation(x_ranks: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman's rho of fixed ranks ``x_ranks`` against ``y`` along ``axis`` (vectorized over the rest)."""
    y_ranks = stats.rankdata(y, axis=axis)
    xc = x_ranks - x_ranks.mean()
    yc = y_ranks - y_ranks.mean(axis=axis, keepdims=True)
    denominator = np.sqrt((xc ** 2).sum()) * np.sqrt((yc ** 2).sum(axis=axis))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (yc * xc).sum(axis=axis) / denominator


def _resampled_null(x_ranks: list[np.ndarray], ys: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """:data:`N_RESAMPLES` values of the blocked statistic, each with y shuffled within every block.

    Shuffling y shuffles its ranks and keeps their spread, so a block's rho under a shuffle is its
    centred x ranks against its centred y ranks in shuffled order, over a fixed denominator: one gather
    and one product per block for a chunk of resamples (chunks bound the memory when a block holds
    thousands of runs)."""
    null = np.zeros(N_RESAMPLES)
    for x_rank, y in zip(x_ranks, ys):
        xc = x_rank - x_rank.mean()
        y_rank = stats.rankdata(y)
        yc = y_rank - y_rank.mean()
        denominator = np.sqrt((xc ** 2).sum()) * np.sqrt((yc ** 2).sum())
        chunk = max(1, _CHUNK_ELEMENTS // len(yc))
        for start in range(0, N_RESAMPLES, chunk):
            count = min(chunk, N_RESAMPLES - start)
            order = rng.permuted(np.broadcast_to(np.arange(len(yc)), (count, len(yc))), axis=1)
            null[start:start + count] += (yc[order] @ xc) / denominator
    return null / len(ys)


def blocked_spearman(blocks: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """(mean within-block Spearman rho, two-sided permutation p-value).

    ``blocks`` are (x, y) pairs of equal length, one per seed. The statistic is the mean over blocks of
    Spearman's rho of y against x. Under the null hypothesis (no association within any block) the y values of each
    block are exchangeable among themselves, so the null distribution permutes y within every block
    independently: exact (``scipy.stats.permutation_test``, ``permutation_type='pairings'``) when
    there are at most :data:`EXACT_UP_TO` such permutations, else :data:`N_RESAMPLES` seeded shuffles
    (:func:`_resampled_null`) with scipy's randomized p-value, (count + 1) / (N_RESAMPLES + 1) per
    side, doubled.
    """
    x_ranks = [stats.rankdata(x) for x, _ in blocks]
    ys = [np.asarray(y, dtype=float) for _, y in blocks]

    def statistic(*samples, axis=-1):
        return np.mean([_rank_correlation(r, s, axis=axis) for r, s in zip(x_ranks, samples)], axis=0)

    observed = float(statistic(*ys))
    if not np.isfinite(observed):
        return math.nan, math.nan
    rng = np.random.default_rng(PERMUTATION_SEED)
    if math.prod(math.factorial(len(y)) for y in ys) <= EXACT_UP_TO:
        result = stats.permutation_test(ys, statistic, permutation_type="pairings", vectorized=True,
                                        n_resamples=np.inf, alternative="two-sided", rng=rng)
        return observed, float(result.pvalue)
    null = _resampled_null(x_ranks, ys, rng)
    gamma = abs(observed) * np.finfo(float).eps * 100  # scipy's tolerance for ties with the observed value
    below = (np.count_nonzero(null <= observed + gamma) + 1) / (N_RESAMPLES + 1)
    above = (np.count_nonzero(null >= observed - gamma) + 1) / (N_RESAMPLES + 1)
    return observed, float(min(1.0, 2 * min(below, above)))


def blocked_trend(blocks: list[tuple[np.ndarray, np.ndarray]], sign: int, *, dropped: int = 0,
                  x_name: str = "batch size") -> Evidence:
    """A trend of y against x claimed to have ``sign`` (+1 rises, -1 falls), blocked by seed.

    Effect size: the mean within-seed Spearman rho. n: the runs (seeds x values of x). The pooled rho
    (all seeds as one sample) is shown beside it, since pooling is what a seed offset fools."""
    n = sum(len(y) for _, y in blocks)
    shape = f"{len(blocks)} seed{'s' if len(blocks) > 1 else ''} x {len(blocks[0][0]) if blocks else 0} {x_name}s"
    if not blocks or len(blocks[0][0]) < 3:
        return no_evidence(n, f"n={n} runs ({shape})", f"fewer than 3 values of {x_name} per seed")
    rho, p = blocked_spearman(blocks)
    if not np.isfinite(rho):
        return no_evidence(n, f"n={n} runs ({shape})", "the measurement does not vary")
    p_for, p_against = _directional(rho, p, sign)
    extra = ""
    if len(blocks) > 1:
        pooled = stats.spearmanr(np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks]))
        extra = f" (pooled over seeds {float(pooled.statistic):+.2f})"
    dropped_note = f"; {dropped} {x_name}s left out (no value in some seed: collapsed or not run)" if dropped else ""
    return Evidence(rho, n, p_for, p_against,
                    f"Spearman rho={rho:+.2f} within seeds{extra}, permutation p={p:.2g}, "
                    f"n={n} ({shape}){dropped_note}")


def pooled_trend(blocks: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """(Spearman rho, p-value) with every block's runs pooled into one sample: what ignoring the seed gives."""
    x = np.concatenate([np.asarray(b[0], dtype=float) for b in blocks])
    y = np.concatenate([np.asarray(b[1], dtype=float) for b in blocks])
    return blocked_spearman([(x, y)])


# --------------------------------------------------------------------------- paired comparisons


def smallest_wilcoxon_p(n: int) -> float:
    """The smallest two-sided p-value an exact signed-rank (or sign) test can give with n pairs: 2 / 2^n (as a
    float power: 2 ** n for n > 1023 pairs, a 10,000-run sweep's, is an int too large for a float)."""
    return min(1.0, 2.0 ** (1 - n)) if n > 0 else 1.0


def paired_difference(differences: np.ndarray, sign: int, *, units: str = "pairs", log_scale: bool = False) -> Evidence:
    """Treatment minus control on paired units, claimed to have ``sign`` (+1 higher, -1 lower).

    Effect size: the mean difference (on a log scale for the eigenvalue, shown as the geometric mean
    ratio). Test: Wilcoxon's signed-rank test, two-sided (``scipy.stats.wilcoxon``; exact for small n
    without ties), which asks whether the differences are symmetric about zero."""
    d = np.asarray(differences, dtype=float)
    d = d[np.isfinite(d)]
    n = len(d)
    if n == 0:
        return no_evidence(0, "n=0 pairs", "no pair has the measurement (collapsed or missing runs)")
    effect = float(d.mean())
    higher = int((d > 0).sum())
    shown = f"ratio {math.exp(effect):.3g}x (geometric mean)" if log_scale else f"mean difference {effect:+.4f}"
    base = f"{shown}, higher in {higher}/{n}"
    if np.all(d == 0):
        return Evidence(0.0, n, 1.0, 1.0, f"{base}: no difference at all")
    p = float(stats.wilcoxon(d, alternative="two-sided").pvalue) if n > 1 else 1.0
    p_for, p_against = _directional(effect, p, sign)
    return Evidence(effect, n, p_for, p_against, f"{base}, Wilcoxon p={p:.2g}, n={n} {units}",
                    floor=smallest_wilcoxon_p(n))


def _t_interval(d: np.ndarray) -> tuple[float, float]:
    """The :data:`CI_LEVEL` t interval of the mean of d."""
    mean, sem = float(d.mean()), float(stats.sem(d))
    half = float(stats.t.ppf(0.5 + CI_LEVEL / 2, len(d) - 1)) * sem
    return mean - half, mean + half


def paired_equivalence(differences: np.ndarray, margin: float, side: str, *, margin_source: str,
                       units: str = "pairs", log_scale: bool = False) -> Evidence:
    """Treatment minus control claimed to be within ``margin`` of zero.

    ``side``: ``'both'`` (no change: -margin < mean < margin, TOST), ``'no gain'`` (mean < margin) or
    ``'no loss'`` (mean > -margin). Each bound is a one-sample t-test of the differences against it
    (``scipy.stats.ttest_1samp``, one-sided); equivalence is shown when every bound's test rejects, so
    the TOST p-value is the larger of the two. The claim is contradicted when the mean is shown to lie
    beyond a bound (the one-sided test in the other direction)."""
    d = np.asarray(differences, dtype=float)
    d = d[np.isfinite(d)]
    n = len(d)
    if n < 2:
        return no_evidence(n, f"n={n} {units}", "fewer than 2 pairs: no interval")
    if not np.isfinite(margin) or margin <= 0:
        return no_evidence(n, f"n={n} {units}", "no equivalence margin: no configuration was run with 2+ seeds")

    def p_vs(bound: float, alternative: str) -> float:
        return float(stats.ttest_1samp(d, bound, alternative=alternative).pvalue)

    return _equivalence(float(d.mean()), _t_interval(d), p_vs, margin, side, margin_source, n, f"n={n} {units}",
                        log_scale)


def _equivalence(effect: float, interval: tuple[float, float], p_vs, margin: float, side: str, margin_source: str,
                 n: int, n_text: str, log_scale: bool, effect_name: str = "mean difference") -> Evidence:
    """The equivalence verdict's p-values from ``p_vs(bound, alternative)``, a one-sided test of the
    effect against a bound."""
    upper_for = p_vs(margin, "less")            # the mean is below +margin
    lower_for = p_vs(-margin, "greater")        # the mean is above -margin
    upper_against = p_vs(margin, "greater")     # the mean is above +margin
    lower_against = p_vs(-margin, "less")       # the mean is below -margin
    if side == "both":
        p_for, p_against, claim = max(upper_for, lower_for), min(upper_against, lower_against), f"within ±{margin:.3g}"
    elif side == "no gain":
        p_for, p_against, claim = upper_for, upper_against, f"below +{margin:.3g}"
    elif side == "no loss":
        p_for, p_against, claim = lower_for, lower_against, f"above -{margin:.3g}"
    else:
        raise ValueError(f"unknown side {side!r}")
    lo, hi = interval
    unit = " (log)" if log_scale else ""
    text = (f"{effect_name} {effect:+.4f}{unit}, {CI_LEVEL:.0%} CI [{lo:+.4f}, {hi:+.4f}], claimed {claim} "
            f"({margin_source}); TOST p={p_for:.2g}, {n_text}")
    return Evidence(effect, n, float(p_for), float(p_against), text)


def trend_equivalence(blocks: list[tuple[np.ndarray, np.ndarray]], margin: float, *, margin_source: str,
                      x_name: str = "batch size") -> Evidence:
    """A measurement claimed constant across x (the batch size), within ``margin``.

    The quantity is the change across the range of x predicted by a linear fit of y on log2(x) with
    one intercept per seed (the seed offset removed by centring x and y within each seed; slope and
    standard error from ``scipy.stats.linregress`` on the centred values, its degrees of freedom
    corrected to n - 1 - seeds). Equivalence: both one-sided t-tests of that change against -margin
    and +margin reject (TOST)."""
    xs, ys = [], []
    for x, y in blocks:
        lx = np.log2(np.asarray(x, dtype=float))
        y = np.asarray(y, dtype=float)
        xs.append(lx - lx.mean())
        ys.append(y - y.mean())
    n = sum(len(y) for y in ys)
    df = n - 1 - len(blocks)
    shape = f"{len(blocks)} seed{'s' if len(blocks) > 1 else ''} x {len(blocks[0][0]) if blocks else 0} {x_name}s"
    if not blocks or df < 1 or len(blocks[0][0]) < 3:
        return no_evidence(n, f"n={n} runs ({shape})", f"too few runs to fit a trend (n={n})")
    if not np.isfinite(margin) or margin <= 0:
        return no_evidence(n, f"n={n} runs ({shape})", "no equivalence margin: no configuration was run with 2+ seeds")
    x, y = np.concatenate(xs), np.concatenate(ys)
    fit = stats.linregress(x, y)
    span = float(max(np.log2(b[0]).max() for b in blocks) - min(np.log2(b[0]).min() for b in blocks))
    change = float(fit.slope) * span
    se = fit.stderr * math.sqrt((n - 2) / df) * span
    t_dist = stats.t(df)

    def p_vs(bound, alternative):
        t = (change - bound) / se if se > 0 else math.copysign(math.inf, change - bound)
        return float(t_dist.sf(t) if alternative == "greater" else t_dist.cdf(t))

    half = float(t_dist.ppf(0.5 + CI_LEVEL / 2)) * se
    lo_x = min(int(b[0].min()) for b in blocks)
    hi_x = max(int(b[0].max()) for b in blocks)
    rhos = np.array([_rank_correlation(stats.rankdata(b[0]), np.asarray(b[1], dtype=float)) for b in blocks])
    rho = float(np.nanmean(rhos)) if np.isfinite(rhos).any() else math.nan  # nan: y constant within every seed
    return _equivalence(change, (change - half, change + half), p_vs, margin, "both", margin_source, n,
                        f"within-seed rho {'n/a' if math.isnan(rho) else f'{rho:+.2f}'}, n={n} ({shape})", False,
                        effect_name=f"fitted change {lo_x}->{hi_x}")
