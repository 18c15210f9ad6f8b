"""COMET's adaptive assignment (tessera/kernels/moe/comet_tune.py): lookup order, the on-disk cache, the shipped
table, the profiling loop. No kernels: the fused layers' tests cover what the chosen numbers do."""

import json

import pytest

from tessera.kernels.moe import comet_tune as tune
from tessera.kernels.moe.comet_tune import CometConfig, TuneKey


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TESSERA_TUNE_CACHE", str(tmp_path))


def _key(tokens=64, device="cpu"):
    return TuneKey(tune.bucket(tokens), 8, 2, 4, 128, 64, device)


def test_bucket_rounds_up_to_a_power_of_two():
    assert [tune.bucket(t) for t in (0, 1, 2, 3, 64, 65, 4096, 4097)] == [1, 1, 2, 4, 64, 128, 4096, 8192]


def test_without_a_profile_the_rule_applies_clipped_to_the_context():
    cfg, src = tune.select(_key(device="never profiled"), nc_max=8, max_blocks=2)
    assert src == "rule" and cfg == CometConfig(3, 2)  # W - 1 senders, at most the context's column blocks


def test_a_recorded_profile_wins_and_is_clipped():
    ranked = tune.profile(lambda cfg: 1e-3 * cfg.n_c + 1e-4 * cfg.n_blocks,
                          [CometConfig(4, 2), CometConfig(1, 1), CometConfig(2, 4)], reps=3)
    assert [(r["n_c"], r["n_blocks"]) for r in ranked] == [(1, 1), (2, 4), (4, 2)]  # fastest median first
    path = tune.record(_key(), ranked[1:])  # pretend (2, 4) won
    assert path == tune.cache_path() and json.loads(path.read_text())["entries"][_key().name()]["n_c"] == 2
    assert tune.select(_key(), nc_max=8, max_blocks=8) == (CometConfig(2, 4), "cache")
    assert tune.select(_key(), nc_max=1, max_blocks=3)[0] == CometConfig(1, 3)
    # another token count of the same model shape takes the nearest profiled one
    cfg, src = tune.select(_key(tokens=100), nc_max=8, max_blocks=8)
    assert cfg == CometConfig(2, 4) and "nearest" in src
    assert tune.select(_key(device="other"), 8, 8)[1] == "rule"  # never another device's profile


def test_format_top_lists_the_fastest_first():
    ranked = [tune.summary(CometConfig(2, 4), [0.010, 0.011, 0.012, 0.013]),
              tune.summary(CometConfig(1, 1), [0.020, 0.021, 0.022, 0.023])]
    text = tune.format_top(_key(), ranked)
    assert text.index("  2         4") < text.index("  1         1") and "1.87x" in text  # 21.5 ms / 11.5 ms (medians)


def test_the_shipped_table_is_well_formed():
    doc = json.loads(tune.DEFAULTS.read_text())
    for name, v in doc["entries"].items():
        device, t, e, k, w, h, i = name.split("|")
        assert t[0] == "T" and int(t[1:]) == tune.bucket(int(t[1:])) and w[0] == "W"
        CometConfig(v["n_c"], v["n_blocks"])
