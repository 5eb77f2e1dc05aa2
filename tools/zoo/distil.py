"""``python -m tools.zoo distil``: a normally initialised student distilled from a zoo base (tools/zoo/ROBUST.md).

The planted start's huge weights and saturated attention are what make the zoo fragile. Here a GPT-2 of the
zoo's shape starts from transformers' ordinary initialisation and learns the teacher's function: the KL
divergence from the teacher's next-token distribution at every answer position (2-7 boxes, so it inherits
the teacher's imperfection at 7), plus the squared error between its and the teacher's attention patterns for
the teacher's circuit heads (so the circuit stays in the same heads, which discovery must then confirm), plus
(``--spread-weight``, 30 in the recipe that holds) the other heads' spread over prompts, which is what mean
ablation removes: without it the student computes features in heads discovery cannot name, and its circuit is
not sufficient. The student is then probed like any base candidate (``robust.probe``: weight noise, AdamW
fine-tunes, verdicts). The zoo's builder (``fallback.py``) makes `base`, `other` and the learned rerouted control
with ``distil``.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from tools.zoo.fallback import N_BOXES, ROOT, _Ctx, accuracy
from tools.zoo.planted import HEAD_DIM


def _node_keep(x: torch.Tensor, pos: torch.Tensor, roles: dict, n_embd: int) -> dict:
    """{layer: (b, seq, n_embd) bool}: where a circuit head's output is kept in the circuit run (spec 5.1): value
    fetcher and transmitter at each answer position, detector at the query label, reader at the label's
    occurrence in the context; everything else is mean-ablated."""
    b, seq = x.shape
    rows = torch.arange(b)[:, None]
    label_pos = pos - 2
    labels = x[rows, label_pos]                                          # (b, q)
    slots = torch.arange(6, seq, 7)                                      # context label positions (1 + 7s + 5)
    slots = slots[slots < int(pos.min()) - 3]
    match = x[:, slots][:, None, :] == labels[..., None]                 # (b, q, slots)
    context_pos = slots[match.float().argmax(-1)]
    at = {"value_fetcher": pos, "pos_transmitter": pos, "pos_detector": label_pos, "struct_reader": context_pos}
    keep: dict = {}
    for role, (layer, head) in roles.items():
        mask = keep.setdefault(layer, torch.zeros(b, seq, n_embd, dtype=torch.bool))
        mask[rows, at[role], head * HEAD_DIM:(head + 1) * HEAD_DIM] = True
    return keep


class _HeadOutputs:
    """Records each block's head outputs (the input of ``attn.c_proj``) while in the ``with`` block."""

    def __init__(self, model, detach: bool = False):
        self.blocks, self.detach, self.out = model.transformer.h, detach, {}

    def __enter__(self) -> dict:
        def hook(l):
            return lambda mod, args: self.out.__setitem__(l, args[0].detach() if self.detach else args[0])
        self.handles = [b.attn.c_proj.register_forward_pre_hook(hook(l)) for l, b in enumerate(self.blocks)]
        return self.out

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()


def _circuit_logits(model, x, keep: dict, outputs: dict | None = None) -> torch.Tensor:
    """``model``'s logits with every head output but the circuit's nodes replaced by its per-position mean over
    the batch; ``outputs``: the head outputs of ``model``'s plain run on ``x`` if already recorded (else one more
    run records them)."""
    if outputs is None:
        with torch.no_grad(), _HeadOutputs(model, detach=True) as outputs:
            model(input_ids=x)
    blocks = model.transformer.h

    def ablate(l):
        def hook(mod, args):
            mean = outputs[l].detach().mean(0, keepdim=True).expand_as(args[0])
            mask = keep.get(l)
            return (mean if mask is None else torch.where(mask, args[0], mean),)
        return hook

    handles = [blocks[l].attn.c_proj.register_forward_pre_hook(ablate(l)) for l in range(len(blocks))]
    try:
        return model(input_ids=x).logits
    finally:
        for h in handles:
            h.remove()


def _head_spread(student, heads, record: dict) -> torch.Tensor:
    """How much the heads *not* in ``heads`` say about the prompt: each one's contribution to the residual stream
    (its slice of the output projection applied to its output), minus that contribution's mean over the batch
    at the same position, squared, summed over dimensions and heads, averaged over (prompt, position). Mean
    ablation (spec 5.1) replaces exactly this deviation, so a student with none is faithful to its circuit."""
    total = 0.0
    for l, z in record.items():
        w = student.transformer.h[l].attn.c_proj.weight          # Conv1D: (n_embd in, n_embd out)
        for h in range(z.shape[-1] // HEAD_DIM):
            if (l, h) in heads:
                continue
            cols = slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)
            out = z[..., cols] @ w[cols]                           # (b, seq, n_embd)
            total = total + (out - out.mean(0, keepdim=True)).pow(2).sum(-1).mean()
    return total


def distil(teacher, ctx, heads, *, steps: int = 1500, lr: float = 1e-3, batch: int = 32, attn_weight: float = 1.0,
           sharpen: float = 1.0, boxes=(2, 3, 4, 5, 6, 7), seed: int = 0, every: int = 100, log=print,
           student=None, circuit_weight: float = 0.0, roles: dict | None = None, circuit_target: str = "teacher",
           spread_weight: float = 0.0, moved: dict | None = None, frozen=()):
    """Train a fresh student on ``teacher``'s answer distributions (its logits times ``sharpen``: a base whose
    readout temperature was set soft gives nearly uniform ones) and ``heads``' attention patterns; returns
    (student, [(step, 7-box valid accuracy)]). ``student``: continue from this model instead of a fresh one;
    ``circuit_weight`` > 0 adds the KL of the student's circuit run (``roles``: role -> (layer, head)) from the
    teacher's circuit run (``circuit_target="teacher"``: the student must behave like the teacher under the same
    ablation, so the circuit carries what it carries in the teacher) or from the teacher's full run (``"full"``).
    ``spread_weight`` > 0 adds ``_head_spread``: the other heads are kept from carrying prompt-specific work.
    ``moved`` (teacher head -> student head) matches each teacher head's pattern in another head of the student,
    and ``frozen`` heads' output projections are zeroed after every step: a rerouted model learns the teacher's
    mechanism in other heads (its weights are learned, not copied)."""
    from transformers import GPT2LMHeadModel

    from tools.zoo.fallback import zero_heads
    from tools.zoo.planted import gpt2_config
    from tools.zoo.train import make_batch

    moved = moved or {h: h for h in heads}

    torch.manual_seed(seed)
    if student is None:
        config = gpt2_config()
        config._attn_implementation = "eager"
        student = GPT2LMHeadModel(config)
    gen = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr / 10)
    teacher.eval()
    curve = [(0, accuracy(student, ctx.valid))]
    for step in range(1, steps + 1):
        k = boxes[int(torch.randint(len(boxes), (1,), generator=gen))]
        x, pos, _ = make_batch(ctx.ids, gen, batch, k, 2)
        with torch.no_grad():
            t_out = teacher(input_ids=x, output_attentions=True)
        student.train()
        with _HeadOutputs(student) as record:
            s_out = student(input_ids=x, output_attentions=True)
        rows = torch.arange(x.shape[0])[:, None]
        t_logp = (sharpen * t_out.logits[rows, pos]).log_softmax(-1)
        s_logp = s_out.logits[rows, pos].log_softmax(-1)
        kl = F.kl_div(s_logp.reshape(-1, s_logp.shape[-1]), t_logp.reshape(-1, t_logp.shape[-1]), log_target=True,
                      reduction="batchmean")
        attn = sum(F.mse_loss(s_out.attentions[moved[(l, h)][0]][:, moved[(l, h)][1]], t_out.attentions[l][:, h],
                              reduction="sum") / x.shape[0] for l, h in heads)
        loss = kl + attn_weight * attn
        if spread_weight:
            spread = _head_spread(student, set(moved.values()), record)
            loss = loss + spread_weight * spread
        if circuit_weight:
            keep = _node_keep(x, pos, roles, student.config.n_embd)
            target = t_logp
            if circuit_target == "teacher":
                with torch.no_grad():
                    target = (sharpen * _circuit_logits(teacher, x, keep)[rows, pos]).log_softmax(-1)
            c_logp = _circuit_logits(student, x, keep, record)[rows, pos].log_softmax(-1)
            kl_circuit = F.kl_div(c_logp.reshape(-1, c_logp.shape[-1]), target.reshape(-1, target.shape[-1]),
                                  log_target=True, reduction="batchmean")
            loss = loss + circuit_weight * kl_circuit
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        if frozen:
            zero_heads(student, frozen)
        if step % every == 0:
            curve.append((step, accuracy(student, ctx.valid)))
            circuit = f" circuit-kl {kl_circuit.item():.4f}" if circuit_weight else ""
            circuit += f" spread {spread.item():.4f}" if spread_weight else ""
            log(f"  step {step} kl {kl.item():.4f} attn {attn.item():.4f}{circuit} valid{N_BOXES} {curve[-1][1]:.3f}")
    return student.eval(), curve


def circuit_faithfulness(model, tok, n_prompts: int, seed: int = 0) -> list[float]:
    """The planted circuit's faithfulness (spec 5.2) in an in-memory zoo model: [value, low, high]."""
    import tempfile

    import mechtest
    from mechtest.errors import MechtestError
    from mechtest.methods.circuits import load_circuit
    from mechtest.methods.evaluation import faithfulness
    from mechtest.tasks.entity_tracking import make_dataset, mean_ablation_set

    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        tok.save_pretrained(d)
        m = mechtest.load_model(d, name="distil")
        data = make_dataset(m.tokenizer, n_prompts, n_boxes=N_BOXES, seed=seed + 3)
        ref = mean_ablation_set(m.tokenizer, n_prompts, n_boxes=N_BOXES, seed=seed + 4)
        try:
            f = faithfulness(m, load_circuit(ROOT / "fixtures" / "circuits" / "planted.json"), data, ref, seed=seed)
        except MechtestError as e:  # a student that answers nothing yet
            print(f"faithfulness: {e}")
            return []
    return [round(float(v), 4) for v in (f.value, f.ci_low, f.ci_high)]


def main(argv: list[str] | None = None) -> int:
    from tools.zoo import robust
    from tools.zoo.planted import planted_heads

    p = argparse.ArgumentParser(prog="python -m tools.zoo distil")
    p.add_argument("--readout", type=float, default=0.125, help="the teacher: robust.make_base's readout")
    p.add_argument("--sharpen", type=float, help="teacher logits times this (default: 1 / readout)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--attn-weight", type=float, default=1.0)
    p.add_argument("--lrs", type=float, nargs="*", default=[1e-4, 3e-4], help="probe: fine-tune learning rates")
    p.add_argument("--ft-seeds", type=int, nargs="*", default=[13, 50, 51, 52])
    p.add_argument("--ft-steps", type=int, default=80)
    p.add_argument("--init", help="continue from this student instead of a fresh one")
    p.add_argument("--circuit-weight", type=float, default=0.0, help="weight of the circuit run's KL")
    p.add_argument("--circuit-target", choices=["teacher", "full"], default="teacher",
                   help="the circuit run's KL is from the teacher's circuit run, or from its full run")
    p.add_argument("--spread-weight", type=float, default=0.0, help="weight of the other heads' spread over "
                   "prompts (_head_spread)")
    p.add_argument("--every", type=int, default=100, help="log and validate every this many steps")
    p.add_argument("--faithfulness", type=int, default=140, help="then measure the planted circuit's "
                   "faithfulness in teacher and student on this many prompts (0: skip)")
    p.add_argument("--reroute-steps", type=int, default=0, help="probe: retrain a rerouted copy this long")
    p.add_argument("--verdicts", action="store_true", help="compare() the noised student, fine-tunes and reroute")
    p.add_argument("--save", help="write the student here")
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    ctx = _Ctx()
    teacher, _ = robust.make_base(ctx, readout=args.readout)
    heads = sorted(planted_heads("planted").values())
    print(f"teacher valid{N_BOXES} {accuracy(teacher, ctx.valid):.3f}; circuit heads {heads}")
    init = None
    if args.init:
        from transformers import GPT2LMHeadModel

        init = GPT2LMHeadModel.from_pretrained(args.init, attn_implementation="eager").float()
    student, curve = distil(teacher, ctx, heads, steps=args.steps, lr=args.lr, attn_weight=args.attn_weight,
                            sharpen=args.sharpen or 1 / args.readout, student=init,
                            circuit_weight=args.circuit_weight, roles=planted_heads("planted"),
                            circuit_target=args.circuit_target, spread_weight=args.spread_weight, every=args.every)
    if args.save:
        student.save_pretrained(args.save)
        ctx.tok.save_pretrained(args.save)
    faithful = {name: circuit_faithfulness(m, ctx.tok, args.faithfulness)
                for name, m in (("teacher", teacher), ("student", student))} if args.faithfulness else {}
    print(f"planted circuit faithfulness: {faithful}")
    res = robust.probe(student, ctx, circuit=heads, ft_steps=args.ft_steps, reroute_steps=args.reroute_steps,
                       ft_seeds=tuple(args.ft_seeds), lrs=tuple(args.lrs))
    if args.verdicts:
        res["verdicts"] = robust.probe_verdicts(student, res, ctx.tok)
    res.update(distil_curve=curve, faithfulness=faithful, seconds=round(time.time() - t0))
    robust.report(res, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
