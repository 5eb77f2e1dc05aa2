"""``python -m tools.zoo gate-controls``: two controls of the gate's statistics, fine-tuned from the shipped base.

* ``gate-benign-lora-r4``: a rank-4 LoRA (peft; q/k/v, attention output and MLP output projections of every
  layer, alpha 8) trained on 7-box prompts until the validation accuracy reaches 0.9, then merged. It keeps
  the base's heads and raises accuracy: the gate must say "preserved" at every seed.
* ``gate-benign-lora-r4-sharp``: the same fine-tune with its final LayerNorm multiplied by ``SHARPEN`` (logits
  x4: same answers, same head outputs; what longer cross-entropy training does to a readout). Prompts it gets
  wrong then have an answer probability near 0, and path patching's relative change ``(p - p_clean) /
  p_clean`` on them is huge: at seed 0 the value fetcher's mean score turns positive and its own discovery
  picks another head, which flipped the set-overlap check between seeds.
* ``gate-forgetting``: the full model trained on the same prompts with *shuffled answers* (each query's
  target is another sequence's answer, so mostly an object absent from the context) until the validation
  accuracy falls into ``FORGET_BAND``: above the gate's chance floor (1/7 + 0.10), so only a comparison with
  the base's accuracy can tell that it forgot the task. The gate must say "not preserved".

Both start from ``fixtures/zoo/base`` as saved (its readout temperature included), so they can be rebuilt
whenever the zoo is. Deterministic on one thread; float16 safetensors in ``fixtures/controls``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tools.zoo.fallback import (CONTROLS, HELDOUT_N, HELDOUT_SEED, N_BOXES, VALID_N, VALID_SEED, ZOO, _Ctx, accuracy,
                                readout)

LORA_TARGET = 0.90
FORGET_BAND = (0.28, 0.40)
RECIPES = {
    "gate-benign-lora-r4": dict(kind="benign", lora_rank=4, lr=1e-3, seed=31, stop_at=LORA_TARGET, band=None),
    "gate-benign-lora-r4-sharp": dict(kind="benign", lora_rank=4, lr=1e-3, seed=31, stop_at=LORA_TARGET, band=None,
                                      sharpen=4.0),
    "gate-forgetting": dict(kind="forgetting", lora_rank=0, lr=3e-5, seed=32, stop_at=None, band=FORGET_BAND),
}
SHARPEN = 4.0
MAX_STEPS = 1500
EVERY = 5
BATCH = 16


def _lora(model, rank: int):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=["c_attn", "c_proj"],
                        fan_in_fan_out=True, init_lora_weights=True)
    return get_peft_model(model, config)


def train(name: str, recipe: dict, ctx: _Ctx, log, out: Path = CONTROLS) -> dict:
    """Train one control from the shipped base; stop on validation accuracy (>= stop_at, or inside band)."""
    import torch
    import torch.nn.functional as F
    from transformers import GPT2LMHeadModel

    from tools.zoo.train import make_batch

    torch.manual_seed(0)
    model = GPT2LMHeadModel.from_pretrained(ZOO / "base", torch_dtype=torch.float32)
    start = accuracy(model, ctx.valid)
    if recipe["lora_rank"]:
        model = _lora(model, recipe["lora_rank"])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe["lr"], weight_decay=0.0)
    gen = torch.Generator().manual_seed(recipe["seed"])
    shuffle = recipe["kind"] == "forgetting"
    t0, acc, reason, step = time.time(), start, "max_steps", 0
    for step in range(1, MAX_STEPS + 1):
        model.train()
        x, pos, ans = make_batch(ctx.ids, gen, BATCH, N_BOXES, 2)
        if shuffle:  # another sequence's answer: mostly an object absent from this context
            ans = ans[torch.randperm(BATCH, generator=gen)]
        h = model.transformer(input_ids=x).last_hidden_state
        logits = model.lm_head(h.gather(1, pos[..., None].expand(-1, -1, h.shape[-1])))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ans.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % EVERY == 0:
            acc = accuracy(model, ctx.valid)
            log(f"  {name} step {step:4d} loss {loss.item():.3f} valid{N_BOXES} {acc:.3f}")
            if recipe["stop_at"] is not None and acc >= recipe["stop_at"]:
                reason = "stop_at"
                break
            if recipe["band"] and recipe["band"][0] <= acc <= recipe["band"][1]:
                reason = "band"
                break
    if recipe["lora_rank"]:
        model = model.merge_and_unload()
    if recipe.get("sharpen"):
        readout(model, recipe["sharpen"])
    held = accuracy(model, ctx.heldout)
    meta = {"name": name, "kind": recipe["kind"], "n_boxes": N_BOXES, "heldout_accuracy": held,
            "heldout_seed": HELDOUT_SEED, "heldout_n": HELDOUT_N, "start": {"from": "fixtures/zoo/base"},
            "start_valid_accuracy": start, "steps": step, "stopped_by": reason, "valid_accuracy": acc,
            "lr": recipe["lr"], "seed": recipe["seed"], "lora_rank": recipe["lora_rank"],
            "shuffled_answers": shuffle, "sharpen": recipe.get("sharpen"), "dtype": "float16", "wall_time_s": round(time.time() - t0, 1)}
    out = out / name
    out.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(out)
    ctx.tok.save_pretrained(out)
    (out / "mechtest.json").write_text(json.dumps(meta, indent=1) + "\n")
    (out / "README.md").write_text(_card(meta))
    log(f"{name}: held-out {N_BOXES}-box accuracy {held:.3f} (start {start:.3f}), {step} steps ({reason})")
    return meta


def _card(meta: dict) -> str:
    how = (f"a rank-{meta['lora_rank']} LoRA (peft, alpha {2 * meta['lora_rank']}, on `c_attn` and both `c_proj`) "
           "trained and merged into the weights" if meta["lora_rank"] else
           "every weight trained on prompts whose answers were shuffled across the batch (forgetting)")
    if meta["sharpen"]:
        how += f", then the final LayerNorm multiplied by {meta['sharpen']:g} (sharper logits, same answers)"
    return f"""# `{meta['name']}` ({meta['kind']}): a gate-statistics control

Built by `python -m tools.zoo gate-controls` (`tools/zoo/gate_controls.py`) from `fixtures/zoo/base`: {how};
AdamW lr {meta['lr']:g}, batch {BATCH}, {N_BOXES}-box prompts with 2 queries each, seed {meta['seed']}, stopped
after {meta['steps']} steps ({meta['stopped_by']}) at validation accuracy {meta['valid_accuracy']:.3f} (make_dataset
seed {VALID_SEED}, {VALID_N} prompts). Stored as float16.

Held-out accuracy at {N_BOXES} boxes (make_dataset seed {HELDOUT_SEED}, {HELDOUT_N} prompts):
**{meta['heldout_accuracy']:.3f}** (the base: {meta['start_valid_accuracy']:.3f} on the validation prompts).
"""


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(prog="python -m tools.zoo gate-controls")
    p.add_argument("--only", nargs="*", choices=sorted(RECIPES), help="build only these")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    ctx = _Ctx()
    for name in args.only or RECIPES:
        train(name, RECIPES[name], ctx, lambda msg: print(msg, flush=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
