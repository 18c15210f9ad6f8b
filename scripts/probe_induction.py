"""Does a model have an induction head? Repeat-copy accuracy on random tokens, and how fast it is learnt.

The task and why it measures the head: `tessera.tasks.repeat`. `scripts/train_tiny.py` runs the same
training first (`--induction-steps`) so that the embedded model has the head before it learns anything else.

    python scripts/probe_induction.py runs/long/model                       # measure
    python scripts/probe_induction.py runs/long/model --train-steps 1000    # + train on repeats, log progress
    python scripts/probe_induction.py runs/long/model --fresh --layers 2 --hidden 128 --train-steps 600
    python scripts/probe_induction.py runs/long/model --fresh --train-steps 600 --lr 3e-3 --out runs/induct
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import replace

import torch
from train_tiny import train_step

from tessera.models import LlamaForCausalLM, load_model, save_model
from tessera.tasks.repeat import LENGTHS, copy_accuracy, held_out_batch, repeat_batch


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--fresh", action="store_true", help="random init (std 0.02) instead of the weights")
    ap.add_argument("--layers", type=int, default=0, help="with --fresh: layers (0 = the model's)")
    ap.add_argument("--hidden", type=int, default=0, help="with --fresh: hidden size, 4 MHA heads (0 = the model's)")
    ap.add_argument("--train-steps", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-len", type=int, default=LENGTHS[0])
    ap.add_argument("--max-len", type=int, default=LENGTHS[1])
    ap.add_argument("--out", help="save the trained model here (HF format, no tokenizer)")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = load_model(args.model)
    if args.fresh:
        cfg = model.config
        if args.layers or args.hidden:
            d = args.hidden or cfg.hidden_size
            cfg = replace(cfg, num_hidden_layers=args.layers or cfg.num_hidden_layers, hidden_size=d,
                          intermediate_size=3 * d, num_attention_heads=4, num_key_value_heads=4, head_dim=d // 4)
        model = LlamaForCausalLM(cfg)
        for p in model.parameters():
            if p.dim() == 2:
                torch.nn.init.normal_(p, std=0.02)
    vocab = model.config.vocab_size
    try:  # checks the lengths before any work
        held_out = held_out_batch(vocab, lo=args.min_len, hi=args.max_len)
    except ValueError as e:
        raise SystemExit(f"bad --min-len/--max-len: {e}") from None
    print(f"repeat-copy accuracy before training: {copy_accuracy(model, *held_out):.3f} (chance {1 / vocab:.3f})")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.05)
    rng, t0 = random.Random(0), time.time()
    for step in range(1, args.train_steps + 1):
        ids, mask = repeat_batch(rng, vocab, 32, args.min_len, args.max_len)
        train_step(model, opt, model, ids, mask, torch.zeros_like(mask), 1.0, args.lr)
        if step % 100 == 0 or step == args.train_steps:
            print(f"step {step}: held-out repeat-copy accuracy {copy_accuracy(model, *held_out):.3f} "
                  f"({time.time() - t0:.0f} s)", flush=True)
    if args.out:
        save_model(model, args.out)


if __name__ == "__main__":
    main()
