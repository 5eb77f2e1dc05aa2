"""``python -m tools.zoo probe DIR``: is a zoo model robust like a trained network? (tools/zoo/ROBUST.md)

Trained networks shrug off small weight noise and ordinary fine-tunes; a model that sits on a knife edge makes
the gate's controls unconvincing. The probe measures, on 7-box validation prompts (never the held-out ones):

* relative weight noise: every tensor plus ``N(0, r * std(tensor))``, accuracy change per seed;
* AdamW fine-tunes (batch 32, 2-7 boxes, grad-clip 1, no weight decay) until 7-box accuracy >= 0.9: the lowest
  logged accuracy (a collapse shows as a minimum below the start);
* a rerouted control: the given heads' output projections zeroed and kept zero while retraining, until the
  accuracy is back at the start's (can the mechanism move to other heads?);
* with ``--verdicts``, ``compare(base, candidate)`` for the noised model and the fine-tunes.

It also holds ``balance``: GPT-2 has per-head scale symmetries (W_Q * a, W_K / a; W_V * b, W_O / b) that leave
the function unchanged; the planted construction uses them badly (W_Q ~ 40x W_K), so relative noise scaled by the
whole ``c_attn`` tensor's std swamps the small blocks.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from tools.zoo.fallback import NOISE, N_BOXES, _Ctx, accuracy, move_head, noise, zero_heads

HEAD_DIM = 64


def rel_noise(model, r: float, seed: int) -> None:
    """Add ``N(0, r * std(p))`` to every parameter ``p`` (the issue's definition of relative weight noise)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() > 1:
                p.add_(torch.randn(p.shape, generator=gen) * (r * float(p.std())))


def _heads(model):
    for block in model.transformer.h:
        attn = block.attn
        d = attn.c_attn.weight.shape[0]
        for h in range(attn.c_attn.weight.shape[1] // 3 // HEAD_DIM):
            cols = torch.arange(h * HEAD_DIM, (h + 1) * HEAD_DIM)
            yield attn, cols, cols + d, cols + 2 * d


def balance(model) -> None:
    """Use the per-head symmetries so |W_Q| = |W_K| = |W_V| for every head (W_O compensates; function unchanged).

    Relative noise is scaled by a whole tensor's std, so a block much smaller than its tensor's largest (the
    planted W_K, W_V next to a huge W_Q) is drowned by it; balanced blocks each get ~1 % of their own scale.
    """
    with torch.no_grad():
        for attn, q, k, v in _heads(model):
            w, b, o = attn.c_attn.weight, attn.c_attn.bias, attn.c_proj.weight
            a = (w[:, k].norm() / w[:, q].norm().clamp_min(1e-12)).sqrt()
            w[:, q] *= a
            b[q] *= a
            w[:, k] /= a
            b[k] /= a
            c = w[:, q].norm() / w[:, v].norm().clamp_min(1e-12)
            w[:, v] *= c
            b[v] *= c
            o[q, :] /= c


def scale_residual(model, g: float) -> None:
    """Multiply the residual stream by ``g`` (embeddings and every block's output projections; ln_f by 1 / g).

    Every LayerNorm removes the scale, so the function is unchanged; the output projections' entries grow by
    ``g``, so an optimizer step of fixed size (Adam's ~lr per entry) is a smaller relative change.
    """
    with torch.no_grad():
        t = model.transformer
        for p in (t.wte.weight, t.wpe.weight, t.ln_f.weight, t.ln_f.bias):
            p.mul_(g if p is t.wte.weight or p is t.wpe.weight else 1 / g)
        for block in t.h:
            for lin in (block.attn.c_proj, block.mlp.c_proj):
                lin.weight.mul_(g)
                lin.bias.mul_(g)


def magnify(model, s: float) -> None:
    """Move every block's LayerNorm gain and bias into the matrix that reads it: ln_1 and ln_2 divided by ``s``,
    ``c_attn`` and ``mlp.c_fc`` weights times ``s`` (function unchanged). Those matrices' entries then dwarf Adam's
    fixed step (~lr per entry), as in a network whose weights grew during long training; the gains, now small,
    take the relative steps instead, each scaling a whole input rather than bending single weights."""
    with torch.no_grad():
        for block in model.transformer.h:
            for ln, lin in ((block.ln_1, block.attn.c_attn), (block.ln_2, block.mlp.c_fc)):
                ln.weight.div_(s)
                ln.bias.div_(s)
                lin.weight.mul_(s)


def train(model, ctx, *, lr: float, seed: int, steps: int, boxes=(2, 3, 4, 5, 6, 7), batch: int = 32,
          every: int = 10, stop_at: float | None = None, frozen=(), wd: float = 0.0, noise: float = 0.0, band=None,
          mix: bool = False, log=print) -> list:
    """AdamW on make_batch sequences (every query supervised); returns [(step, 7-box valid accuracy)].

    ``noise`` > 0 trains on noise-perturbed weights (each step's gradient taken at ``w + N(0, noise * std)``, the
    update applied to ``w``): a flat-minimum regulariser. ``mix``: each sequence of a batch draws its own box
    count (else one count per batch).
    """
    import torch.nn.functional as F

    from tools.zoo.train import make_batch

    gen = torch.Generator().manual_seed(seed)
    ngen = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=wd)
    curve = [(0, accuracy(model, ctx.valid))]
    for step in range(1, steps + 1):
        model.train()
        if mix:  # every batch a mixture: each sequence draws its own box count (one sub-batch per count)
            drawn = torch.tensor(boxes)[torch.randint(len(boxes), (batch,), generator=gen)]
            parts = [(int(k), int((drawn == k).sum())) for k in boxes if (drawn == k).any()]
        else:
            parts = [(boxes[int(torch.randint(len(boxes), (1,), generator=gen))], batch)]
        saved = None
        if noise:
            saved = [p.detach().clone() for p in model.parameters()]
            with torch.no_grad():
                for p in model.parameters():
                    if p.numel() > 1:
                        p.add_(torch.randn(p.shape, generator=ngen) * (noise * float(p.std())))
        opt.zero_grad(set_to_none=True)
        for k, size in parts:
            x, pos, ans = make_batch(ctx.ids, gen, size, k, 2)
            h = model.transformer(input_ids=x).last_hidden_state
            logits = model.lm_head(h.gather(1, pos[..., None].expand(-1, -1, h.shape[-1])))
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ans.reshape(-1))
            (loss * size / batch).backward()
        if saved:
            with torch.no_grad():
                for p, s in zip(model.parameters(), saved):
                    p.copy_(s)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if frozen:
            zero_heads(model, frozen)
        if step % every == 0:
            curve.append((step, accuracy(model, ctx.valid)))
            log(f"    step {step} loss {loss.item():.3f} valid{N_BOXES} {curve[-1][1]:.3f}")
            if stop_at is not None and curve[-1][1] >= stop_at:
                break
            if band is not None and band[0] <= curve[-1][1] <= band[1]:
                break
    return curve


def make_base(ctx, *, variant: str = "planted", noise_seed: int = 1, scale: float = 16.0, readout: float = 0.5,
              lr: float = 1e-4, inject: float = 0.0, wd: float = 0.0, band=(0.63, 0.72), steps: int = 600,
              boxes=(2, 3, 4, 5, 6, 7), soften: float = 1.0, seed: int = 0, log=print):
    """A base candidate: the noised planted model, balanced and rescaled, its readout temperature set *before*
    training (so training calibrates its logits), trained on 2-7 boxes until the 7-box accuracy is in ``band``."""
    from tools.zoo.planted import build_model

    torch.manual_seed(0)
    model = build_model(variant)
    noise(model, NOISE, noise_seed)
    balance(model)
    scale_residual(model, scale)
    with torch.no_grad():
        for attn, q, k, _ in _heads(model):  # attention scores times ``soften`` (a softer start)
            for cols in (q, k):
                attn.c_attn.weight[:, cols] *= soften ** 0.5
                attn.c_attn.bias[cols] *= soften ** 0.5
        model.transformer.ln_f.weight.mul_(readout)
        model.transformer.ln_f.bias.mul_(readout)
    log(f"make_base lr {lr:g} inject {inject} wd {wd} readout {readout}: start {accuracy(model, ctx.valid):.3f}")
    curve = train(model, ctx, lr=lr, seed=seed, steps=steps, every=5 if band else 50, band=band, wd=wd, noise=inject,
                  boxes=boxes, log=log)
    return model, curve


def soften_into_band(model, ctx, heads=None, band=(0.63, 0.72), tries: int = 12, log=print):
    """A converged model made imperfect by a structural change: the query weights of ``heads`` (all when None)
    times the factor that puts 7-box accuracy in ``band`` (bisection; blurrier attention, which a fine-tune
    only has to sharpen back). Returns (model, factor) or (None, None) when no factor lands in the band."""
    lo, hi = 0.0, 1.0
    for _ in range(tries):
        f = (lo + hi) / 2
        m = _copy(model)
        with torch.no_grad():
            for i, (attn, q, _, _) in enumerate(_heads(m)):
                per_layer = attn.c_attn.weight.shape[1] // 3 // HEAD_DIM
                if heads is None or (i // per_layer, i % per_layer) in heads:
                    attn.c_attn.weight[:, q] *= f
                    attn.c_attn.bias[q] *= f
        a = accuracy(m, ctx.valid)
        log(f"  queries x{f:.4f}: valid{N_BOXES} {a:.3f}")
        if band[0] <= a <= band[1]:
            return m, f
        lo, hi = (f, hi) if a < band[0] else (lo, f)
    return None, None


def _copy(model):
    import copy

    return copy.deepcopy(model)


def probe(model, ctx, *, circuit, noise_seeds=(0, 1, 2), r: float = 0.01, lrs=(1e-4, 3e-4), ft_steps: int = 200,
          reroute_steps: int = 300, reroute_lr: float = 3e-4, move: bool = True, ft_seeds=(50,),
          mix: bool = False, log=print) -> dict:
    """Every robustness number of the module docstring for one model (``circuit``: heads to reroute)."""
    t0 = time.time()
    acc0 = accuracy(model, ctx.valid)
    out = {"valid_accuracy": acc0, "noise": {}, "finetunes": {}, "reroute": None}
    log(f"start valid{N_BOXES} {acc0:.3f}")
    for s in noise_seeds:
        m = _copy(model)
        rel_noise(m, r, s)
        out["noise"][s] = accuracy(m, ctx.valid)
        log(f"  noise r={r} seed {s}: {out['noise'][s]:.3f} ({out['noise'][s] - acc0:+.3f})")
    for lr, s in ((lr, s) for lr in lrs for s in ft_seeds):
        m = _copy(model)
        log(f"  AdamW lr {lr:g} data seed {s}")
        curve = train(m, ctx, lr=lr, seed=s, steps=ft_steps, stop_at=0.9, mix=mix, log=log)
        out["finetunes"][f"{lr:g}/{s}"] = {"min": min(a for _, a in curve), "final": curve[-1][1], "steps": curve[-1][0],
                                "curve": curve, "model": m}
    if reroute_steps:
        m = _copy(model)
        for h in circuit if move else ():
            move_head(m, h, (h[0], (h[1] + 1) % 4))
        zero_heads(m, circuit)
        log(f"  reroute {circuit} (moved: {move}) lr {reroute_lr:g}: zeroed {accuracy(m, ctx.valid):.3f}")
        curve = train(m, ctx, lr=reroute_lr, seed=60, steps=reroute_steps, stop_at=acc0, frozen=circuit, log=log)
        out["reroute"] = {"final": curve[-1][1], "steps": curve[-1][0], "model": m}
    out["seconds"] = round(time.time() - t0)
    return out


def verdicts(base_hf, candidates: dict, tok, *, n_prompts: int = 140, seed: int = 0, log=print) -> dict:
    """``compare(base, candidate).verdict`` for in-memory GPT-2 models (written to a temporary folder)."""
    import tempfile

    import mechtest
    from mechtest.methods.compare import compare

    out = {}
    with tempfile.TemporaryDirectory() as d:
        def load(hf, name):
            hf.save_pretrained(f"{d}/{name}")
            tok.save_pretrained(f"{d}/{name}")
            return mechtest.load_model(f"{d}/{name}", name=name)

        base = load(base_hf, "base")
        for name, hf in candidates.items():
            c = compare(base, load(hf, name), n_prompts=n_prompts, n_boxes=N_BOXES, seed=seed, progress=False)
            out[name] = {"verdict": c.verdict, "accuracy": float(c.candidate_accuracy.value),
                         "faithfulness": None if c.faithfulness is None else float(c.faithfulness.value)}
            log(f"  {name}: {c.verdict} | {c.reason}")
    return out


def probe_verdicts(model, res: dict, tok) -> dict:
    """The gate's verdicts for a probe's candidates: the model 1 %-noised, its fine-tunes and its rerouted copy."""
    noised = _copy(model)
    rel_noise(noised, 0.01, 0)
    cands = {"noise-1pct": noised, **{f"adamw-{run}": f["model"] for run, f in res["finetunes"].items()}}
    if res["reroute"]:
        cands["rerouted"] = res["reroute"]["model"]
    return verdicts(model, cands, tok)


def main(argv: list[str] | None = None) -> int:
    from transformers import GPT2LMHeadModel

    from tools.zoo.planted import planted_heads

    p = argparse.ArgumentParser(prog="python -m tools.zoo probe")
    p.add_argument("model", help="a GPT-2 checkpoint folder of the zoo, or 'make' to train a base candidate")
    p.add_argument("--lr", type=float, default=1e-4, help="make: learning rate of the base's training")
    p.add_argument("--inject", type=float, default=0.0, help="make: relative weight noise while training")
    p.add_argument("--wd", type=float, default=0.0, help="make: AdamW weight decay")
    p.add_argument("--soften", type=float, default=1.0, help="make: attention scores times this at the start")
    p.add_argument("--make-scale", type=float, default=16.0, help="make: residual scale")
    p.add_argument("--readout", type=float, default=0.5, help="make: readout temperature set before training")
    p.add_argument("--boxes", type=int, nargs="*", default=[2, 3, 4, 5, 6, 7], help="make: box counts trained")
    p.add_argument("--steps", type=int, default=600, help="make: most training steps")
    p.add_argument("--no-band", action="store_true", help="make: train all --steps (no stop in the band)")
    p.add_argument("--soften-after", help="make (with --no-band): then scale the queries of this planted role's "
                   "head, or 'all' heads, into the band (soften_into_band)")
    p.add_argument("--save", help="make: write the base candidate here")
    p.add_argument("--balance", action="store_true", help="balance the per-head scales first")
    p.add_argument("--scale", type=float, default=1.0, help="then multiply the residual stream by this")
    p.add_argument("--magnify", type=float, default=1.0, help="then move the LayerNorms' scale into the matrices "
                   "that read them, times this (magnify)")
    p.add_argument("--verdicts", action="store_true", help="compare() the noised model and the fine-tunes")
    p.add_argument("--ft-steps", type=int, default=200)
    p.add_argument("--ft-seeds", type=int, nargs="*", default=[50], help="data seeds of the fine-tunes")
    p.add_argument("--mix", action="store_true", help="fine-tunes: each sequence draws its own box count")
    p.add_argument("--lrs", type=float, nargs="*", default=[1e-4, 3e-4], help="fine-tune learning rates")
    p.add_argument("--reroute-steps", type=int, default=300)
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    ctx = _Ctx()
    if args.model == "make":
        model, curve = make_base(ctx, lr=args.lr, inject=args.inject, wd=args.wd, readout=args.readout,
                                  scale=args.make_scale, soften=args.soften,
                                  boxes=tuple(args.boxes), steps=args.steps,
                                  band=None if args.no_band else (0.63, 0.72))
        if args.soften_after:
            heads = None if args.soften_after == "all" else [planted_heads("planted")[args.soften_after]]
            model, _ = soften_into_band(model, ctx, heads)
            if model is None:
                print("no query scale puts the model in the band")
                return 1
        if args.save:
            model.save_pretrained(args.save)
            ctx.tok.save_pretrained(args.save)
    else:
        model = GPT2LMHeadModel.from_pretrained(args.model, attn_implementation="eager").float().eval()
    if args.balance:
        balance(model)
    if args.scale != 1.0:
        scale_residual(model, args.scale)
    if args.magnify != 1.0:
        magnify(model, args.magnify)
    circ = sorted(planted_heads("planted").values())
    res = probe(model, ctx, circuit=circ, ft_steps=args.ft_steps, reroute_steps=args.reroute_steps,
                ft_seeds=tuple(args.ft_seeds), lrs=tuple(args.lrs), mix=args.mix)
    if args.verdicts:
        res["verdicts"] = probe_verdicts(model, res, ctx.tok)
    report(res, args.json)
    return 0


def report(res: dict, path: str | None) -> None:
    """Print a probe's fine-tune summary and its numbers (the trained models dropped), and write them to ``path``."""
    for k, f in res["finetunes"].items():
        print(f"fine-tune {k}: lowest {f['min']:.3f} (start {res['valid_accuracy']:.3f}), final {f['final']:.3f} "
              f"after {f['steps']} steps")
        f.pop("model")
    if res["reroute"]:
        res["reroute"].pop("model")
    print(json.dumps(res, default=str))
    if path:
        with open(path, "w") as fh:
            json.dump(res, fh, indent=1, default=str)


if __name__ == "__main__":
    raise SystemExit(main())
