"""scripts/train_tiny.py's weighted and evaluated targets land on the tokens they name: the far copies, and
with --weight-final-sum the question's sum `D + E = S , mod 10 is A . answer : A` (D, E, S, A, A)."""

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import train_tiny  # noqa: E402

from tessera.tasks.reasoning import make_problem  # noqa: E402

TOK = str(ROOT / "tessera" / "assets" / "tiny-reasoner")
SEEDS = [1_000_007, 1_000_009, 5]


def _words(tok, ids, positions):
    return [tok.decode([int(ids[p])]).strip() for p in positions]


def test_final_sum_weights_and_eval_targets_name_the_sum_tokens():
    train_tiny._init_worker(TOK)
    tok = train_tiny._TOK
    plus_id = tok.encode("+", add_bos=False)[0]
    for seed in SEEDS:
        p = make_problem(seed)
        r1 = p.solution.split()[p.far_copies[-1]]
        rn, total = p.solution.split()[-16], p.solution.split()[-10]  # `rN = E . D + E = S , mod 10 is A . answer : A`
        ids, n_prompt, far = train_tiny.encode_problem((seed, 0.0, False, False))
        assert len(far) == 3 and _words(tok, ids, far)[-1] == r1  # far copies only without the flag
        ids_w, _, far_w = train_tiny.encode_problem((seed, 0.0, False, True))
        assert ids_w == ids and far_w[:3] == far
        assert _words(tok, ids, far_w[3:]) == [r1, rn, total, str(p.answer), str(p.answer)]

    batches = train_tiny.make_batches(tok, SEEDS, 1 << 16, train_prompt=False)  # one padded batch of three
    (ids, mask, _), = batches
    sums = train_tiny.final_sum_targets(ids, mask, plus_id)  # [B, T-1]
    assert sums.sum(1).tolist() == [3, 3, 3]
    for b in range(ids.shape[0]):
        got = [tok.decode([int(t)]).strip() for t in ids[b, 1:][sums[b]]]
        words = tok.decode(ids[b][mask[b]].tolist()).split()
        i = len(words) - 1 - words[::-1].index("+")
        assert got == [words[i - 1], words[i + 1], words[i + 3]]
        assert int(got[0]) + int(got[1]) == int(got[2])
    assert not train_tiny.final_sum_targets(ids, torch.zeros_like(mask), plus_id).any()
