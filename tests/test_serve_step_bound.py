"""benchmarks/serve_step_bound.py: decode steps of static batches vs continuous batching, from lengths alone."""

from bench_modules import load_benchmark

B = load_benchmark("serve_step_bound")


def test_static_waits_for_each_batch_longest_and_continuous_refills_at_once():
    # batches of 2: [5, 1] then [1, 1] -> 5 + 1 static steps; continuous: the row freed at step 1 takes the
    # third request (ends at 2), then the fourth (ends at 3), while the first runs to 5
    assert B.step_counts([5, 1, 1, 1], 2) == (6, 5)
    assert B.step_counts([3, 3, 3, 3], 2) == (6, 6)  # equal lengths: nothing to refill
    assert B.step_counts([4, 1, 1, 1, 1, 1, 1, 1, 1], 8) == (5, 4)  # a lone ninth request
