"""``python -m tools.zoo build``: the shipped zoo, trained from planted models (DESIGN.md, "The zoo"; ROBUST.md).

`base` is a *student*: a GPT-2 of the zoo's shape from transformers' ordinary initialisation, distilled
(``tools/zoo/distil.py``) from a teacher that starts as the planted GPT-2 (``tools/zoo/planted.py``, circuit
known) with noised weights, trained on 2-7 boxes until its 7-box accuracy is imperfect (``robust.make_base``).
The student learns the teacher's answer distributions and its circuit heads' attention patterns while its other
heads are kept quiet (``SPREAD_WEIGHT``), so it inherits the teacher's imperfection at 7 boxes and its circuit,
but has a trained network's normal weights: 1 % weight noise and AdamW at 3e-4 leave it intact (issue 23). Then:

* `finetuned`: `base` trained further on 7 boxes (the evaluated setting) until >= 0.95;
* `other`: a student of `planted-b` (same function, the planted heads in other slots; own noise and seeds),
  then fine-tuned like `finetuned`: an independent model of the same shape and tokenizer, its own heads;
* controls under ``fixtures/controls`` (float16 safetensors; ``mechtest.load_model`` loads float32 on CPU):
  benign fine-tunes of `base` (seeds, learning rates up to AdamW 3e-4, box mixes); rerouted models, either
  with base's circuit heads copied to a neighbour slot, or *learned*: base's circuit heads zeroed and frozen,
  the model distilled from `base` until its accuracy is back, the patterns asked of other heads; and
  independent seeds (noised `planted-b` trained into the band, then fine-tuned).

Every run is deterministic (one thread, fixed seeds). Measurements: ``python -m tools.zoo build --measure``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

N_BOXES = 7
NOISE = 0.15                # multiplicative weight noise applied to the planted model
VALID_SEED = 777            # validation prompts used to stop training (make_dataset seed)
VALID_N = 400
HELDOUT_SEED = 1000         # held-out prompts for the model cards (never used to stop training)
HELDOUT_N = 1000
PLANTED_BAND = (0.63, 0.72)  # 7-box validation accuracy at which a trained planted start is snapshotted
BASE_BAND = (0.55, 0.80)    # 7-box validation accuracy `base` must land in (imperfect, as Llama-7B's 0.66)
TEACHER_READOUT = 0.125     # the students' teachers: robust.make_base with this readout temperature
DISTIL_STEPS = 5000         # distillation steps of a student (at 4,000 its circuit was 0.83-0.88 faithful in fine-tunes)
SPREAD_WEIGHT = 30.0        # weight of the non-circuit heads' spread over prompts (distil._head_spread)
FINETUNED_MIN = 0.95
ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "fixtures" / "zoo"
CONTROLS = ROOT / "fixtures" / "controls"


@dataclass
class Stage:
    """One AdamW phase (box count per batch drawn uniformly from ``boxes``)."""

    max_steps: int
    boxes: tuple[int, ...]
    n_queries: int
    lr: float
    seed: int
    band: tuple[float, float] | None = None
    stop_at: float | None = None
    extra_steps: int = 0
    every: int = 10
    batch: int = 16


@dataclass
class Recipe:
    name: str
    start: str   # "planted:<variant>:<noise seed>", "student:<variant>:<noise seed>:<student seed>" or a built name
    stages: list[Stage]
    out: str = "zoo"                 # "zoo" (float32) or "controls" (float16)
    frozen: list[tuple[int, int]] = field(default_factory=list)   # heads zeroed and kept zero
    moved: dict = field(default_factory=dict)   # (layer, head) -> head slot its weights are copied into
    kind: str = ""
    relearn_steps: int = 0           # > 0: ``moved`` heads are learned by distilling from ``start``, not copied


PLANTED_STAGE = Stage(max_steps=200, boxes=(2, 3, 4, 5, 6), n_queries=3, lr=3e-5, seed=0, band=PLANTED_BAND, every=5)
# Every saved model's final LayerNorm (ln_f weight and bias) is multiplied by this after training: a readout
# temperature (argmax, hence accuracy, unchanged; head outputs unchanged) so that a wrong answer keeps a
# non-negligible probability. Discovery scores a head by the *relative* change of the answer's probability,
# averaged over prompts; with the planted model's sharp logits, prompts the imperfect base gets wrong have
# p_clean ~ 0 and dominate the average with huge positive ratios, and the value fetcher came out last.
READOUT_SCALE = 0.5


def _ft(seed: int, lr: float = 5e-5, boxes=(7,), extra: int = 20) -> Stage:
    return Stage(max_steps=600, boxes=boxes, n_queries=2, lr=lr, seed=seed, stop_at=FINETUNED_MIN,
                 extra_steps=extra, every=10)


def _adamw(seed: int, lr: float) -> Stage:
    """An ordinary fine-tune (issue 23): AdamW, batch 32, 2-7 boxes, until 7-box accuracy >= 0.9."""
    return Stage(max_steps=400, boxes=(2, 3, 4, 5, 6, 7), n_queries=2, lr=lr, seed=seed, stop_at=0.9, batch=32)


def recipes() -> list[Recipe]:
    from tools.zoo.planted import planted_heads

    circ = sorted(planted_heads("planted").values())
    # rerouted: each circuit head's weights go to the next slot of its layer; the original slot is zeroed/frozen
    moved_a = {h: (h[0], (h[1] + 1) % 4) for h in circ}
    moved_b = {h: (h[0], (h[1] + 3) % 4) for h in circ}
    return [
        Recipe("base", "student:planted:1:0", [], kind="base"),
        Recipe("finetuned", "base", [_ft(10)], kind="finetuned"),
        Recipe("other", "student:planted-b:2:1", [_ft(20)], kind="other"),
        Recipe("fallback-benign-seed11", "base", [_ft(11)], out="controls", kind="benign"),
        Recipe("fallback-benign-lr1e-4", "base", [_ft(12, lr=1e-4)], out="controls", kind="benign"),
        Recipe("fallback-benign-boxes5-7", "base", [_ft(13, lr=3e-5, boxes=(5, 6, 7), extra=40)], out="controls",
               kind="benign"),
        Recipe("fallback-benign-adamw1e-4", "base", [_adamw(16, 1e-4)], out="controls", kind="benign"),
        Recipe("fallback-benign-adamw3e-4", "base", [_adamw(17, 3e-4)], out="controls", kind="benign"),
        Recipe("fallback-rerouted-a", "base", [_ft(14)], out="controls", frozen=circ, moved=moved_a, kind="rerouted"),
        Recipe("fallback-rerouted-b", "base", [_ft(15)], out="controls", frozen=circ, moved=moved_b, kind="rerouted"),
        Recipe("fallback-rerouted-learned", "base", [], out="controls", frozen=circ, moved=moved_a, kind="rerouted",
               relearn_steps=4000),
        Recipe("fallback-independent-3", "planted:planted-b:3", [Stage(**{**PLANTED_STAGE.__dict__, "seed": 2}),
                                                               _ft(21)], out="controls", kind="independent"),
        Recipe("fallback-independent-4", "planted:planted-b:4", [Stage(**{**PLANTED_STAGE.__dict__, "seed": 3}),
                                                               _ft(22)], out="controls", kind="independent"),
    ]


# --- training ------------------------------------------------------------------------------------

class _Ctx:
    def __init__(self):
        from mechtest.tasks.datasets import make_dataset
        from tools.zoo.train import Ids
        from tools.zoo.vocab import build_tokenizer

        self.tok = build_tokenizer()
        self.ids = Ids(self.tok)
        self.valid = make_dataset(self.tok, VALID_N, n_boxes=N_BOXES, seed=VALID_SEED)
        self.heldout = make_dataset(self.tok, HELDOUT_N, n_boxes=N_BOXES, seed=HELDOUT_SEED)


def accuracy(model, data, batch: int = 250) -> float:
    import torch

    model.eval()
    hits = 0
    with torch.no_grad():
        for s in range(0, len(data.input_ids), batch):
            sl = slice(s, s + batch)
            out = model(input_ids=data.input_ids[sl], attention_mask=data.attention_mask[sl]).logits
            last = out[torch.arange(out.shape[0]), data.last_pos[sl]]
            hits += int((last.argmax(-1) == data.answer_ids[sl]).sum())
    return hits / len(data.input_ids)


def noise(model, scale: float, seed: int) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + scale * torch.randn(p.shape, generator=gen))


def readout(model, scale: float) -> None:
    """Multiply the final LayerNorm's weight and bias by ``scale`` (logits scale by it, argmax unchanged)."""
    import torch

    with torch.no_grad():
        model.transformer.ln_f.weight.mul_(scale)
        model.transformer.ln_f.bias.mul_(scale)


def _head_cols(head: int, head_dim: int = 64):
    import torch

    return torch.arange(head * head_dim, (head + 1) * head_dim)


def zero_heads(model, heads) -> None:
    import torch

    with torch.no_grad():
        for layer, head in heads:
            model.transformer.h[layer].attn.c_proj.weight[_head_cols(head), :] = 0


def move_head(model, src: tuple[int, int], dst: tuple[int, int]) -> None:
    """Copy head ``src``'s q/k/v and output weights into slot ``dst`` of the same layer."""
    import torch

    assert src[0] == dst[0]
    attn = model.transformer.h[src[0]].attn
    d = attn.c_attn.weight.shape[0]
    s, t = _head_cols(src[1]), _head_cols(dst[1])
    with torch.no_grad():
        for k in range(3):
            attn.c_attn.weight[:, t + k * d] = attn.c_attn.weight[:, s + k * d]
            attn.c_attn.bias[t + k * d] = attn.c_attn.bias[s + k * d]
        attn.c_proj.weight[t, :] = attn.c_proj.weight[s, :]


def train_stage(model, ctx: _Ctx, st: Stage, frozen, log) -> dict:
    import torch
    import torch.nn.functional as F

    from tools.zoo.train import make_batch

    gen = torch.Generator().manual_seed(st.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=st.lr, weight_decay=0.0)
    t0, acc, stop_after, reason = time.time(), float("nan"), None, "max_steps"
    step, lowest = 0, float("inf")
    for step in range(1, st.max_steps + 1):
        model.train()
        k = st.boxes[int(torch.randint(len(st.boxes), (1,), generator=gen))]
        x, pos, ans = make_batch(ctx.ids, gen, st.batch, k, st.n_queries)
        h = model.transformer(input_ids=x).last_hidden_state
        hq = h.gather(1, pos[..., None].expand(-1, -1, h.shape[-1]))
        logits = model.lm_head(hq)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ans.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if frozen:
            zero_heads(model, frozen)
        if step % st.every == 0:
            acc = accuracy(model, ctx.valid)
            lowest = min(lowest, acc)
            log(f"  step {step:4d} loss {loss.item():.3f} valid{N_BOXES} {acc:.3f} {time.time() - t0:.0f}s")
            if stop_after is not None and step >= stop_after:
                reason = "stop_at+extra"
                break
            if st.band and st.band[0] <= acc <= st.band[1]:
                reason = "band"
                break
            if st.stop_at is not None and acc >= st.stop_at and stop_after is None:
                if not st.extra_steps:
                    reason = "stop_at"
                    break
                stop_after = step + st.extra_steps
    return {"steps": step, "reason": reason, "valid_accuracy": acc, "lowest_valid_accuracy": lowest, "lr": st.lr,
            "boxes": list(st.boxes), "n_queries": st.n_queries, "batch": st.batch, "seed": st.seed, "seconds": round(time.time() - t0, 1)}


def _student(spec: str, ctx: _Ctx, log):
    """``student:<variant>:<noise seed>:<student seed>``: the teacher (``robust.make_base``) and its distilled
    student (``distil.distil``, the recipe of ROBUST.md); returns (student, start metadata)."""
    from tools.zoo import robust
    from tools.zoo.distil import distil
    from tools.zoo.planted import planted_heads

    _, variant, nseed, sseed = spec.split(":")
    teacher, _ = robust.make_base(ctx, variant=variant, noise_seed=int(nseed), readout=TEACHER_READOUT, log=log)
    teacher_acc = accuracy(teacher, ctx.valid)
    log(f"  teacher valid{N_BOXES} {teacher_acc:.3f}; distilling {DISTIL_STEPS} steps")
    model, curve = distil(teacher, ctx, sorted(planted_heads(variant).values()), steps=DISTIL_STEPS,
                          sharpen=1 / TEACHER_READOUT, spread_weight=SPREAD_WEIGHT, seed=int(sseed), log=log)
    return model, {"student_of": variant, "noise": NOISE, "noise_seed": int(nseed), "student_seed": int(sseed),
                   "teacher_readout": TEACHER_READOUT, "teacher_valid_accuracy": teacher_acc,
                   "distil_steps": DISTIL_STEPS, "spread_weight": SPREAD_WEIGHT, "distil_curve": curve}


def _load_built(name: str):
    """A zoo model built by an earlier run, as it was before the readout temperature (exact: a power of 2)."""
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(ZOO / name, attn_implementation="eager", torch_dtype=torch.float32)
    readout(model, 1 / READOUT_SCALE)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def build_one(r: Recipe, ctx: _Ctx, built: dict, log) -> dict:
    import torch

    from tools.zoo.planted import build_model

    torch.manual_seed(0)
    t0 = time.time()
    if r.start.startswith("planted:"):
        _, variant, nseed = r.start.split(":")
        model = build_model(variant)
        noise(model, NOISE, int(nseed))
        start = {"planted_variant": variant, "noise": NOISE, "noise_seed": int(nseed)}
    elif r.start.startswith("student:"):
        model, start = _student(r.start, ctx, log)
    else:
        if r.start not in built:
            built[r.start] = _load_built(r.start)
        model = build_model("planted")
        model.load_state_dict({k: v.clone() for k, v in built[r.start].items()})
        start = {"from": r.start}
    if r.relearn_steps:
        start.update(_relearn(model, r, ctx, log))
    else:
        for src, dst in r.moved.items():
            move_head(model, tuple(src), tuple(dst))
    if r.frozen:
        zero_heads(model, r.frozen)
    start_acc = accuracy(model, ctx.valid)
    log(f"{r.name}: start {r.start} valid{N_BOXES} {start_acc:.3f}")
    stages = [train_stage(model, ctx, st, r.frozen, log) for st in r.stages]
    if r.kind == "base" and not BASE_BAND[0] <= start_acc <= BASE_BAND[1]:
        raise RuntimeError(f"base's {N_BOXES}-box validation accuracy {start_acc:.3f} is outside {BASE_BAND}")
    built[r.name] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    held = accuracy(model, ctx.heldout)
    meta = {"name": r.name, "kind": r.kind, "n_boxes": N_BOXES, "heldout_accuracy": held,
            "heldout_seed": HELDOUT_SEED, "heldout_n": HELDOUT_N, "start": start,
            "start_valid_accuracy": start_acc, "stages": stages, "steps": sum(s["steps"] for s in stages),
            "frozen_heads": [list(h) for h in r.frozen],
            "moved_heads": [[list(a), list(b)] for a, b in r.moved.items()],
            "dtype": "float16" if r.out == "controls" else "float32",
            "wall_time_s": round(time.time() - t0, 1)}
    out = (ZOO if r.out == "zoo" else CONTROLS) / r.name
    out.mkdir(parents=True, exist_ok=True)
    readout(model, READOUT_SCALE)
    save = model.half() if r.out == "controls" else model
    save.save_pretrained(out)
    ctx.tok.save_pretrained(out)
    (out / "mechtest.json").write_text(json.dumps(meta, indent=1) + "\n")
    (out / "README.md").write_text(model_card(meta))
    log(f"{r.name}: held-out {N_BOXES}-box accuracy {held:.3f}, {meta['steps']} steps, {meta['wall_time_s']}s")
    return meta


def _relearn(model, r: Recipe, ctx: _Ctx, log) -> dict:
    """A rerouted model *learned* from its start (ROBUST.md): ``r.frozen`` zeroed and kept zero, the whole model
    distilled from the start with each frozen head's pattern asked of its ``r.moved`` slot, so the job has to
    move to other heads by training, weights not copied."""
    import copy

    from tools.zoo.distil import distil

    teacher = copy.deepcopy(model).eval()
    zero_heads(model, r.frozen)
    zeroed = accuracy(model, ctx.valid)
    log(f"  {r.name}: circuit heads zeroed: valid{N_BOXES} {zeroed:.3f}; relearning {r.relearn_steps} steps")
    student, curve = distil(teacher, ctx, sorted(r.frozen), steps=r.relearn_steps, lr=1e-3, student=model,
                            spread_weight=SPREAD_WEIGHT, moved=dict(r.moved), frozen=r.frozen, log=log)
    return {"zeroed_valid_accuracy": zeroed, "relearn_steps": r.relearn_steps, "spread_weight": SPREAD_WEIGHT,
            "relearn_curve": curve}


def model_card(meta: dict, measured: dict | None = None) -> str:
    stages = "\n".join(
        f"| {i + 1} | {s['boxes']} | {s['n_queries']} | {s['batch']} | {s['lr']:g} | {s['seed']} | {s['steps']} | "
        f"{s['reason']} | {s['valid_accuracy']:.3f} | {s['lowest_valid_accuracy']:.3f} |" for i, s in enumerate(meta["stages"]))
    start = meta["start"]
    if "student_of" in start:
        curve = ", ".join(f"{a:.3f} @{n}" for n, a in start["distil_curve"][:: max(1, len(start["distil_curve"]) // 8)])
        origin = (f"a student distilled from a teacher: the planted GPT-2 `{start['student_of']}` with every weight "
                  f"multiplied by `1 + {start['noise']} * N(0, 1)` (noise seed {start['noise_seed']}), trained into "
                  f"the band by `robust.make_base` (readout {start['teacher_readout']}; {N_BOXES}-box validation "
                  f"{start['teacher_valid_accuracy']:.3f}). The student (transformers' ordinary initialisation, seed "
                  f"{start['student_seed']}) learned the teacher's answer distributions and its circuit heads' "
                  f"attention patterns for {start['distil_steps']} steps, its other heads kept quiet (spread weight "
                  f"{start['spread_weight']:g}; `tools/zoo/distil.py`); validation {curve}")
    elif "planted_variant" in start:
        origin = (f"the planted GPT-2 `{start['planted_variant']}` with every weight multiplied by "
                  f"`1 + {start['noise']} * N(0, 1)` (noise seed {start['noise_seed']})")
    else:
        origin = f"`{start['from']}`"
    extra = ""
    if "relearn_steps" in start:
        extra += (f"\nRerouted by learning: `{start['from']}`'s circuit heads {meta['frozen_heads']} zeroed in `c_proj` "
                  f"(validation {start['zeroed_valid_accuracy']:.3f}) and kept zero after every step, then the model "
                  f"distilled from `{start['from']}` for {start['relearn_steps']} steps with each frozen head's "
                  f"attention pattern asked of {[b for _, b in meta['moved_heads']]} (same layer): the job moved to "
                  "other heads by training, no weight copied.\n")
    elif meta["frozen_heads"]:
        extra += (f"\nRerouted: heads {meta['frozen_heads']} (base's circuit) had their weights copied to "
                  f"{[b for _, b in meta['moved_heads']]} (same layer), then their slice of `c_proj` was zeroed "
                  "and kept zero after every optimizer step, so the job runs in other heads.\n")
    training = "" if not meta["stages"] else f"""
Then AdamW (betas 0.9/0.999, no weight decay, grad-clip 1), every query of `tools.zoo.train.make_batch`
sequences supervised, stopping on {N_BOXES}-box validation accuracy (make_dataset seed {VALID_SEED}, {VALID_N}
prompts; checked every few steps):

| stage | boxes | queries/seq | batch | lr | seed | steps | stopped by | valid acc | lowest logged |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
{stages}
"""
    text = f"""# `{meta['name']}` ({meta['kind']}): the zoo, built from a planted model

Built by `python -m tools.zoo build` (`tools/zoo/fallback.py`). Shape: `GPT2LMHeadModel`, 4 layers x 4 heads,
d_model 256, MLP 64, the shared word-level tokenizer (as `fixtures/zoo/planted`); stored as {meta['dtype']}.

Start: {origin}.
{extra}{training}
Saved with the final LayerNorm's weight and bias multiplied by {READOUT_SCALE} (a readout temperature: same
argmax, same head outputs; see `READOUT_SCALE` in the builder for why).

Held-out accuracy at {N_BOXES} boxes (make_dataset seed {HELDOUT_SEED}, {HELDOUT_N} prompts):
**{meta['heldout_accuracy']:.3f}**. Wall time {meta['wall_time_s']} s on one CPU thread.
"""
    if measured:
        text += "\n## Measured with mechtest\n\n" + measured_md(measured) + "\n"
    return text


def measured_md(rows: dict) -> str:
    lines = ["| eval seed | accuracy | base-circuit faithfulness [95% CI] | random circuits | CMAP gain | verdict |",
             "| --- | --- | --- | --- | --- | --- |"]
    for seed, m in rows.items():
        lines.append(f"| {seed} | {m['accuracy']:.3f} | {m['faithfulness']:.3f} [{m['faith_lo']:.3f}, "
                     f"{m['faith_hi']:.3f}] | {m.get('random', float('nan')):.3f} | {m.get('cmap_gain', '')} | "
                     f"{m.get('verdict', '')} |")
    return "\n".join(lines)


def build(names: list[str] | None, log) -> list[dict]:
    """Build every recipe, or only ``names`` (a start built earlier is read back from ``fixtures/zoo``, so
    independent recipes can run as parallel processes: ``build --only base`` and ``--only other``, then the rest)."""
    import torch

    torch.set_num_threads(1)
    known = {r.name for r in recipes()}
    unknown = sorted(set(names or ()) - known)
    if unknown:
        raise SystemExit(f"unknown recipe(s) {unknown}; known: {sorted(known)}")
    ctx = _Ctx()
    built: dict = {}
    return [build_one(r, ctx, built, log) for r in recipes() if not names or r.name in names]


# Two processes, one thread each: the students first, then the learned reroute beside every other recipe and
# the gate controls (tools/zoo/gate_controls.py), which start from the built base. ~42 min on 2 cores.
PARALLEL_PLAN = (
    (["build", "--only", "base"], ["build", "--only", "other"]),
    (["build", "--only", "fallback-rerouted-learned"],
     ["build", "--only", "finetuned", "fallback-benign-seed11", "fallback-benign-lr1e-4", "fallback-benign-boxes5-7",
      "fallback-benign-adamw1e-4", "fallback-benign-adamw3e-4", "fallback-rerouted-a", "fallback-rerouted-b",
      "fallback-independent-3", "fallback-independent-4"], ["gate-controls"]),
)


def _build_in_parallel(log) -> None:
    """Run ``PARALLEL_PLAN``: each phase's first command in one process, the rest in turn in another."""
    import subprocess
    import sys

    plan_names = {n for phase in PARALLEL_PLAN for cmd in phase if cmd[0] == "build" for n in cmd[2:]}
    missing = {r.name for r in recipes()} - plan_names
    if missing:
        raise RuntimeError(f"PARALLEL_PLAN leaves out {sorted(missing)}")
    def run(cmd):
        return subprocess.Popen([sys.executable, "-m", "tools.zoo", *cmd], cwd=ROOT)

    for first, *rest in PARALLEL_PLAN:
        log(f"phase: {' '.join(first)} || {' ; '.join(' '.join(c) for c in rest)}")
        side = run(first)
        codes = [run(cmd).wait() for cmd in rest] + [side.wait()]
        if any(codes):
            raise RuntimeError(f"a build process failed (exit codes {codes})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.zoo build")
    p.add_argument("--measure", action="store_true", help="measure the built models (tools/zoo/fallback_measure)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="build only these recipes")
    p.add_argument("--jobs", type=int, choices=(1, 2), default=2, help="2: the two long chains side by side "
                   "(PARALLEL_PLAN), one thread each; 1: every recipe in turn")
    p.add_argument("--readme-table", action="store_true", help="print the README's zoo table from the measurements")
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--renamings", type=int, default=50, help="within-layer renamings of `other` for the false-pass rate")
    args = p.parse_args(argv)
    t0 = time.time()

    def log(msg):
        print(msg, flush=True)

    if args.readme_table:
        from tools.zoo.fallback_measure import RESULTS, readme_table

        print(readme_table(json.loads(RESULTS.read_text())))
        return 0
    if args.measure:
        from tools.zoo.fallback_measure import measure_all, write_cards

        write_cards(measure_all(args.seeds, log, n_renamings=args.renamings))
    elif args.only or args.jobs == 1:
        build(args.only, log)
    else:
        _build_in_parallel(log)
    log(f"total {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
