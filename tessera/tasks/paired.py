"""Paired comparison of two methods on the same problems: a sign test and a bootstrap interval.

Two KV-compression methods decoding the same problems disagree on a handful of them; whether A beats B is
a question about those discordant problems, not about two accuracies with their own noise. Per problem the
outcome is a number in [0, 1] (1/0 for greedy, the mean over samples for sampling):
- the sign test (exact two-sided binomial over the problems where the two differ; McNemar's exact test for
  0/1 outcomes) says how surprising the split of wins and losses is if neither method were better. With
  fractional outcomes (means over samples) a problem counts as a win or a loss by the sign of the difference
  of its two means, whatever its size (3/8 vs 2/8 weighs as much as 8/8 vs 0/8), and equal means are ties,
  dropped: the test asks whether a problem's difference is as likely positive as negative, not how large it is;
- the paired bootstrap resamples *problems* (both outcomes together) and gives a percentile interval for
  the difference of mean accuracy (Efron & Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13).
`compare` prints "A beats B" only when the interval excludes zero, and always prints the interval.
"""

from __future__ import annotations

import math
import random


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact p-value of `wins` vs `losses` under a fair coin (ties dropped); 1.0 when both are 0."""
    n, k = wins + losses, min(wins, losses)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_bootstrap(a: list[float], b: list[float], n_boot: int = 4000, level: float = 0.95,
                     seed: int = 0) -> tuple[float, float, float]:
    """-> (mean(a) - mean(b), lower, upper): a percentile interval at `level`, problems resampled in pairs."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_bootstrap: need two equally long, non-empty lists, got {len(a)} and {len(b)}")
    d = [x - y for x, y in zip(a, b)]
    n, rng = len(d), random.Random(seed)
    means = sorted(sum(d[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    lo = means[int((1 - level) / 2 * n_boot)]
    hi = means[min(n_boot - 1, int((1 + level) / 2 * n_boot))]
    return sum(d) / n, lo, hi


def compare(name_a: str, a: dict, name_b: str, b: dict, n_boot: int = 4000, level: float = 0.95,
            digits: int = 1) -> dict:
    """a, b: problem id -> outcome in [0, 1] (0/1, or a mean over samples). Compared on the problems both have.
    Wins / losses: problems where a's outcome is above / below b's, by any amount; equal outcomes are ties, which
    the sign test drops (so for means over samples it tests the sign of each problem's difference, not its
    size; the bootstrap interval is about the size). -> a summary with `line`,
    the sentence to print: "W beats L by +x points (95% CI [lo, hi] ...)", the interval and the wins of the
    winner, or "A vs B: ..., no clear difference" when the interval contains zero. `digits`: decimals of the
    points (3 for per-token accuracies, whose differences are hundredths of a point)."""
    ids = sorted(set(a) & set(b))
    if not ids:
        raise ValueError(f"compare: {name_a} and {name_b} share no problem")
    xa, xb = [float(a[i]) for i in ids], [float(b[i]) for i in ids]
    wins = sum(x > y for x, y in zip(xa, xb))
    losses = sum(x < y for x, y in zip(xa, xb))
    diff, lo, hi = paired_bootstrap(xa, xb, n_boot, level)
    p = sign_test(wins, losses)

    def say(w, lw, d, lo_, hi_, nw, nl):
        return (f"{w} beats {lw} by {100 * d:+.{digits}f} points ({100 * level:.0f}% CI [{100 * lo_:+.{digits}f}, "
                f"{100 * hi_:+.{digits}f}], {nw} wins / {nl} losses, sign test p={p:.3g}; n={len(ids)})")

    if lo > 0:
        line = say(name_a, name_b, diff, lo, hi, wins, losses)
    elif hi < 0:  # told from the winner's side: its lead, its interval, its wins
        line = say(name_b, name_a, -diff, -hi, -lo, losses, wins)
    else:
        line = (f"{name_a} vs {name_b}: {100 * diff:+.{digits}f} points, no clear difference ({100 * level:.0f}% CI "
                f"[{100 * lo:+.{digits}f}, {100 * hi:+.{digits}f}], {wins} wins / {losses} losses, sign test p={p:.3g}; "
                f"n={len(ids)})")
    return {"a": name_a, "b": name_b, "n": len(ids), "acc_a": sum(xa) / len(ids), "acc_b": sum(xb) / len(ids),
            "diff": diff, "ci": [lo, hi], "level": level, "wins": wins, "losses": losses, "sign_p": p, "line": line}


def proportion_interval(correct: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (95% at z = 1.96) of an accuracy `correct / n`; (0, 1) when n = 0.

    `correct` may be a sum of per-problem means over samples (outcomes in [0, 1]). The interval is then
    conservative: an outcome x in [0, 1] with mean p has x^2 <= x, so its variance E[x^2] - p^2 is at most
    p(1 - p), the 0/1 variance the Wilson interval assumes; averaging samples only lowers it. The paired
    bootstrap of `compare`, which resamples the actual per-problem outcomes, does see the lower variance."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    mid, half = (p + z * z / (2 * n)), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (mid - half) / (1 + z * z / n)), min(1.0, (mid + half) / (1 + z * z / n))
