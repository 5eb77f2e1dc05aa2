"""Train the shipped tiny entity-tracking models (``python -m tools.zoo build``).

Three checkpoints of one shape and one tokenizer are rebuilt from fixed seeds:

* ``base``      -- the main run, snapshotted the first time its validation accuracy sits in the base band;
* ``finetuned`` -- ``base`` trained further on a related, harder mix (more boxes, more queries per sequence);
* ``other``     -- an independent run (another seed, hence another initialisation and data order).

Training sequences follow the paper's template (object first, then ``Box`` label) followed by several
queries ``Box L contains the o .`` drawn *with replacement*; the loss is put on every answer. Batches are
built directly as token-id tensors; :func:`check_batch_matches_tokenizer` proves once per build that they
equal the tokenizer's tokenization of the template text.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

N_BOXES = 3  # box count of the shipped models (held-out prompts, model cards, mechtest.json)
HELDOUT_SEED = 1000  # make_dataset seed of the held-out set; never used for training or model selection
HELDOUT_N = 1000
VALID_SEED = 777  # make_dataset-style seed used to pick checkpoints during training (not the held-out set)
VALID_N = 300
BASE_BAND = (0.55, 0.80)  # accuracy band of `base` on the held-out set
SNAPSHOT_BAND = (0.60, 0.75)  # validation accuracy at which `base` is snapshotted (inside the base band)
FINETUNED_MIN = 0.95
OTHER_MIN = 0.90
NAMES = ("base", "finetuned", "other")


# ----------------------------------------------------------------------------------------------------------
# Model shape and recipes
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Shape:
    hidden_size: int = 64
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    intermediate_size: int = 128
    max_position_embeddings: int = 256
    tie_word_embeddings: bool = False
    rope_theta: float = 10000.0
    initializer_range: float = 0.02
    # a direction shared by every token embedding at init (relative scale): gives q/k a constant component,
    # so purely positional attention (object -> its label, query label -> last position) is available early
    embed_shared: float = 0.0
    # a direction shared by all objects and another shared by all box labels at init (relative scale): word
    # classes, so that "attend to the objects" / "to the labels" need not be learned one token at a time
    embed_types: float = 0.0
    # layer-0 heads whose attention is initialised to a fixed relative offset: ((head, offset), ...)
    positional_init: tuple = ()
    positional_scale: float = 1.5


@dataclass
class Phase:
    """One training phase: box counts are drawn per batch from ``boxes`` (uniformly)."""

    max_steps: int
    boxes: tuple[int, ...]
    n_queries: int
    lr: float = 3e-3
    warmup: int = 200
    batch: int = 64
    weight_decay: float = 0.01
    # stop early when validation accuracy reaches ``stop_at`` (None: run max_steps) ...
    stop_at: float | None = None
    # ... or when it lies inside ``band`` (used to snapshot `base`)
    band: tuple[float, float] | None = None
    eval_every: int = 100
    # weight of an auxiliary next-token loss on every position of the template text (0: answers only)
    lm_loss: float = 0.0
    # after stop_at is reached, keep training this many steps (stabilises the final model)
    extra_steps: int = 0


@dataclass
class Recipe:
    name: str
    seed: int
    phases: list[Phase] = field(default_factory=list)
    init_from: str | None = None  # name of another zoo checkpoint to start from


SHAPE = Shape(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    tie_word_embeddings=True,
    rope_theta=100.0,
    initializer_range=0.1,
    embed_shared=1.0,
    embed_types=1.0,
)

RECIPES: dict[str, Recipe] = {
    "base": Recipe(
        name="base",
        seed=0,
        phases=[Phase(max_steps=30000, boxes=(2, 3), n_queries=8, lr=3e-3, batch=32, band=SNAPSHOT_BAND,
                      eval_every=25)],
    ),
    "finetuned": Recipe(
        name="finetuned",
        seed=10,
        init_from="base",
        phases=[
            Phase(max_steps=8000, boxes=(2, 3, 4), n_queries=12, lr=2e-3, warmup=100, batch=32,
                  stop_at=0.975, eval_every=100, extra_steps=300)
        ],
    ),
    "other": Recipe(
        name="other",
        seed=1,
        phases=[
            Phase(max_steps=30000, boxes=(2, 3), n_queries=8, lr=3e-3, batch=32, stop_at=0.97,
                  eval_every=100, extra_steps=300)
        ],
    ),
}


# ----------------------------------------------------------------------------------------------------------
# Token ids and batches
# ----------------------------------------------------------------------------------------------------------
class Ids:
    """Token ids of the template words, the 26 labels and the object pool for one tokenizer."""

    def __init__(self, tokenizer):
        from tools.zoo.vocab import LABELS, object_names

        def one(word: str) -> int:
            ids = tokenizer(word, add_special_tokens=False)["input_ids"]
            if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
                raise ValueError(f"{word!r} is not a single known token")
            return ids[0]

        self.bos = tokenizer.bos_token_id
        self.The, self.the, self.is_, self.in_, self.Box, self.contains = (
            one(w) for w in ("The", "the", "is", "in", "Box", "contains")
        )
        self.comma, self.period = one(","), one(".")
        self.labels = [one(x) for x in LABELS]
        self.objects = [one(o) for o in object_names()]


def make_batch(ids: Ids, gen, batch: int, n_boxes: int, n_queries: int):
    """Training sequences: context + ``n_queries`` queries (labels drawn with replacement).

    Returns ``(input_ids (B, T), answer_pos (B, Q), answer_ids (B, Q))``; ``answer_pos`` indexes the ``the``
    token whose next-token prediction must be the answer.
    """
    import torch

    objs = torch.tensor(ids.objects)
    labs = torch.tensor(ids.labels)
    o_idx = torch.rand(batch, len(ids.objects), generator=gen).argsort(dim=1)[:, :n_boxes]
    l_idx = torch.rand(batch, len(ids.labels), generator=gen).argsort(dim=1)[:, :n_boxes]
    o, lab = objs[o_idx], labs[l_idx]  # (B, K)
    q = torch.randint(0, n_boxes, (batch, n_queries), generator=gen)

    ctx_len = 1 + 7 * n_boxes
    T = ctx_len + 6 * n_queries - 1  # last query has no trailing period
    x = torch.empty(batch, T, dtype=torch.long)
    x[:, 0] = ids.bos
    for s in range(n_boxes):
        b = 1 + 7 * s
        x[:, b] = ids.The if s == 0 else ids.the
        x[:, b + 1] = o[:, s]
        x[:, b + 2] = ids.is_
        x[:, b + 3] = ids.in_
        x[:, b + 4] = ids.Box
        x[:, b + 5] = lab[:, s]
        x[:, b + 6] = ids.period if s == n_boxes - 1 else ids.comma
    ans_pos = torch.empty(batch, n_queries, dtype=torch.long)
    for j in range(n_queries):
        b = ctx_len + 6 * j
        x[:, b] = ids.Box
        x[:, b + 1] = lab.gather(1, q[:, j : j + 1])[:, 0]
        x[:, b + 2] = ids.contains
        x[:, b + 3] = ids.the
        x[:, b + 4] = o.gather(1, q[:, j : j + 1])[:, 0]
        if j < n_queries - 1:
            x[:, b + 5] = ids.period
        ans_pos[:, j] = b + 3
    ans = x.gather(1, ans_pos + 1)
    return x, ans_pos, ans


def batch_text(tokenizer, x_row) -> str:
    """The template text of one training sequence (for the tokenizer check)."""
    words = tokenizer.convert_ids_to_tokens(x_row.tolist()[1:])
    text = ""
    for w in words:
        text += w if w in (",", ".") or not text else " " + w
    return text


def check_batch_matches_tokenizer(tokenizer, ids: Ids) -> None:
    """Raise unless the id-level batch builder equals tokenizing the template text."""
    import torch

    from tools.zoo.vocab import LABELS, object_names

    gen = torch.Generator().manual_seed(12345)
    obj_name = dict(zip(ids.objects, object_names()))
    lab_name = dict(zip(ids.labels, LABELS))
    for n_boxes in (2, 3, 7):
        x, ans_pos, ans = make_batch(ids, gen, 4, n_boxes, 3)
        for r in range(x.shape[0]):
            row = x[r].tolist()
            objs = [obj_name[row[2 + 7 * s]] for s in range(n_boxes)]
            labs = [lab_name[row[6 + 7 * s]] for s in range(n_boxes)]
            segs = [f"{'The' if s == 0 else 'the'} {objs[s]} is in Box {labs[s]}" for s in range(n_boxes)]
            text = ", ".join(segs) + "."
            for j in range(ans_pos.shape[1]):
                qlab = lab_name[row[ans_pos[r, j] - 2]]
                text += f" Box {qlab} contains the {objs[labs.index(qlab)]}"
                if j < ans_pos.shape[1] - 1:
                    text += "."
            enc = tokenizer(text)["input_ids"]
            if enc != row:
                raise AssertionError(f"batch builder disagrees with the tokenizer on {text!r}")
            if ans[r].tolist() != [row[p + 1] for p in ans_pos[r].tolist()]:
                raise AssertionError("answer ids are not the tokens after the answer positions")


# ----------------------------------------------------------------------------------------------------------
# Held-out prompts
# ----------------------------------------------------------------------------------------------------------
def template_prompts(tokenizer, n: int, *, n_boxes: int, seed: int):
    """Paper-template prompts (single query), rows in blocks of n_boxes sharing a context.

    Uses ``mechtest.tasks.entity_tracking.make_dataset`` when it exists; otherwise an equivalent local
    generator (same template text, tokenized by ``tokenizer``). Returns ``(input_ids, answer_ids, queried_index)``
    as tensors.
    """
    import torch

    try:
        from mechtest.tasks.entity_tracking import make_dataset
    except ImportError:
        make_dataset = None
    if make_dataset is not None:
        ds = make_dataset(tokenizer, n, n_boxes=n_boxes, seed=seed)
        return (
            torch.as_tensor(ds.input_ids),
            torch.as_tensor(ds.answer_ids),
            torch.as_tensor(ds.queried_index),
        )
    return _local_prompts(tokenizer, n, n_boxes=n_boxes, seed=seed)


def _local_prompts(tokenizer, n: int, *, n_boxes: int, seed: int):
    import random

    import torch

    from tools.zoo.vocab import LABELS, object_names

    rng = random.Random(seed)
    objects = object_names()
    texts, answers, queried = [], [], []
    while len(texts) < n:
        objs = rng.sample(objects, n_boxes)
        labs = rng.sample(LABELS, n_boxes)
        ctx = ", ".join(
            f"{'The' if s == 0 else 'the'} {objs[s]} is in Box {labs[s]}" for s in range(n_boxes)
        )
        for j in range(n_boxes):
            texts.append(f"{ctx}. Box {labs[j]} contains the")
            answers.append(tokenizer(objs[j], add_special_tokens=False)["input_ids"][0])
            queried.append(j)
    texts, answers, queried = texts[:n], answers[:n], queried[:n]
    input_ids = torch.tensor([tokenizer(t)["input_ids"] for t in texts])
    return input_ids, torch.tensor(answers), torch.tensor(queried)


def logits_last(model, input_ids, batch: int = 500):
    import torch

    outs = []
    with torch.no_grad():
        for i in range(0, input_ids.shape[0], batch):
            outs.append(model(input_ids=input_ids[i : i + batch]).logits[:, -1].float())
    return torch.cat(outs)


def accuracy(model, input_ids, answer_ids) -> float:
    return (logits_last(model, input_ids).argmax(-1) == answer_ids).float().mean().item()


# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------
def new_model(tokenizer, shape: Shape, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_attention_heads,
        max_position_embeddings=shape.max_position_embeddings,
        rms_norm_eps=1e-5,
        rope_theta=shape.rope_theta,
        initializer_range=shape.initializer_range,
        tie_word_embeddings=shape.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    if shape.embed_shared:
        emb = model.get_input_embeddings().weight
        with torch.no_grad():
            emb += shape.embed_shared * emb.std() * torch.randn(emb.shape[1])
    if shape.embed_types:
        ids = Ids(tokenizer)
        emb = model.get_input_embeddings().weight
        with torch.no_grad():
            std = emb.std()
            for group in (ids.objects, ids.labels):
                emb[torch.tensor(group)] += shape.embed_types * std * torch.randn(emb.shape[1])
    if shape.positional_init:
        init_positional_heads(model, shape.positional_init, shape.positional_scale)
    return model


def init_positional_heads(model, heads, scale: float = 1.5, n_freqs: int = 4) -> None:
    """Initialise the queries/keys of layer-0 heads so that position i attends to position i - offset.

    Needs the direction shared by all token embeddings (``embed_shared``): after the input RMSNorm it is a
    near-constant component ``c`` of every position, and with q = u (c.x), k = v (c.x) the RoPE score is
    ``sum_k A cos((i - j - offset) theta_k)`` over the ``n_freqs`` fastest rotary frequencies, which peaks
    at j = i - offset. Only the initial values are set; training is free to change them.
    """
    import torch

    emb = model.get_input_embeddings().weight.detach()
    c = emb.mean(0)
    c = c / c.norm()
    attn = model.model.layers[0].self_attn
    n_heads = model.config.num_attention_heads
    hd = model.config.hidden_size // n_heads
    inv_freq = model.model.rotary_emb.inv_freq.float()
    half = hd // 2
    with torch.no_grad():
        for head, offset in heads:
            u = torch.zeros(hd)
            v = torch.zeros(hd)
            for k in range(min(n_freqs, half)):
                u[k] = math.cos(offset * inv_freq[k].item())
                u[k + half] = -math.sin(offset * inv_freq[k].item())
                v[k] = 1.0
            rows = slice(head * hd, (head + 1) * hd)
            attn.q_proj.weight[rows] = scale * torch.outer(u, c)
            attn.k_proj.weight[rows] = scale * torch.outer(v, c)


def train_phase(model, ids: Ids, phase: Phase, *, seed: int, valid, log, steps_override: int | None = None,
                curve: list | None = None, step0: int = 0, device: str = "cpu"):
    """Run one phase; returns (steps_done, reason, last_valid_acc)."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=phase.lr, weight_decay=phase.weight_decay,
                            betas=(0.9, 0.98))
    max_steps = phase.max_steps if steps_override is None else steps_override
    warm = max(1, min(phase.warmup, max_steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    v_ids, v_ans = valid
    t0 = time.time()
    run_loss, stop_after, acc = 0.0, None, float("nan")
    for step in range(1, max_steps + 1):
        model.train()
        k = phase.boxes[int(torch.randint(len(phase.boxes), (1,), generator=gen))]
        x, pos, ans = make_batch(ids, gen, phase.batch, k, phase.n_queries)
        x, pos, ans = x.to(device), pos.to(device), ans.to(device)
        h = model.model(input_ids=x).last_hidden_state
        hq = h.gather(1, pos[..., None].expand(-1, -1, h.shape[-1]))
        logits = model.lm_head(hq)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ans.reshape(-1))
        if phase.lm_loss:
            all_logits = model.lm_head(h[:, :-1])
            lm = F.cross_entropy(all_logits.reshape(-1, all_logits.shape[-1]), x[:, 1:].reshape(-1))
            loss_total = loss + phase.lm_loss * lm
        else:
            loss_total = loss
        opt.zero_grad(set_to_none=True)
        loss_total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        run_loss += loss.item()
        if step % phase.eval_every == 0 or step == max_steps:
            model.eval()
            acc = accuracy(model, v_ids, v_ans)
            n = phase.eval_every if step % phase.eval_every == 0 else step % phase.eval_every
            log(f"step {step0 + step:6d}  loss {run_loss / n:.4f}  valid_acc {acc:.3f}  "
                f"{time.time() - t0:7.1f}s")
            if curve is not None:
                curve.append((step0 + step, run_loss / n, acc))
            run_loss = 0.0
            if stop_after is not None and step >= stop_after:
                return step, "stop_at+extra", acc
            if phase.band is not None and phase.band[0] <= acc <= phase.band[1]:
                return step, "band", acc
            if phase.stop_at is not None and acc >= phase.stop_at and stop_after is None:
                if phase.extra_steps == 0:
                    return step, "stop_at", acc
                stop_after = step + phase.extra_steps
    return max_steps, "max_steps", acc


# ----------------------------------------------------------------------------------------------------------
# Evidence: per-position accuracy, absent query label, per-head mean ablation
# ----------------------------------------------------------------------------------------------------------
def per_position_accuracy(model, input_ids, answer_ids, queried, n_boxes: int) -> list[float]:
    correct = logits_last(model, input_ids).argmax(-1) == answer_ids
    return [round(correct[queried == j].float().mean().item(), 4) for j in range(n_boxes)]


def absent_label_stats(model, ids: Ids, input_ids, n_boxes: int, seed: int = 0) -> dict:
    """What the model does when the query label is absent from the context, vs. the real query label.

    For the real label and for two independently drawn absent labels (same prompts): the mean over prompts
    of the largest probability any context object gets (softmax over the full vocabulary), the mean total
    probability of the context objects, and the mean entropy (bits) of the distribution renormalised over the
    context objects (max log2(n_boxes)). Plus, for absent labels, which box position the most probable
    context object sits at (a positional default would put most mass on one position) and how often the
    two absent labels pick the same context object (1.0 for a fixed default; ~1/n_boxes if the choice is
    driven by the identity of the query label).
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    obj_pos = torch.tensor([2 + 7 * s for s in range(n_boxes)])
    lab_pos = torch.tensor([6 + 7 * s for s in range(n_boxes)])
    absent = [input_ids.clone(), input_ids.clone()]
    for r in range(input_ids.shape[0]):
        ctx = set(input_ids[r, lab_pos].tolist())
        pool = [x for x in ids.labels if x not in ctx]
        pick = torch.randperm(len(pool), generator=gen)[:2].tolist()
        absent[0][r, -3], absent[1][r, -3] = pool[pick[0]], pool[pick[1]]
    out, choice = {}, {}
    for name, x in (("present", input_ids), ("absent", absent[0]), ("absent_2", absent[1])):
        p = logits_last(model, x).softmax(-1)
        pc = p.gather(1, x[:, obj_pos])  # (n, K)
        q = pc / pc.sum(-1, keepdim=True)
        ent = -(q * q.clamp_min(1e-12).log2()).sum(-1)
        choice[name] = pc.argmax(-1)
        if name == "absent_2":
            continue
        out[name] = {
            "mean_max_prob_context_object": round(pc.max(-1).values.mean().item(), 4),
            "mean_prob_mass_context_objects": round(pc.sum(-1).mean().item(), 4),
            "mean_entropy_bits_over_context_objects": round(ent.mean().item(), 4),
        }
    out["absent"]["argmax_position_distribution"] = [
        round((choice["absent"] == j).float().mean().item(), 4) for j in range(n_boxes)
    ]
    out["absent"]["same_choice_for_two_absent_labels"] = round(
        (choice["absent"] == choice["absent_2"]).float().mean().item(), 4
    )
    out["max_entropy_bits"] = round(math.log2(n_boxes), 4)
    return out


def head_ablation(model, input_ids, answer_ids, ref_ids, whole_layers: bool = False) -> list:
    """Accuracy after mean-ablating each single head (its slice of the o_proj input at every position).

    The mean is taken over the reference prompts ``ref_ids`` at each position (same length as the prompts).
    Returns a (layers x heads) nested list of accuracies (``whole_layers``: one accuracy per layer with all
    of its heads ablated together).
    """
    import torch

    layers = model.model.layers
    n_heads = model.config.num_attention_heads
    hd = model.config.hidden_size // n_heads
    means = {}

    def grab(li):
        def hook(mod, args):
            means[li] = args[0].mean(0)  # (T, H*hd)
        return hook

    handles = [layers[i].self_attn.o_proj.register_forward_pre_hook(grab(i)) for i in range(len(layers))]
    try:
        with torch.no_grad():
            model(input_ids=ref_ids)
    finally:
        for h in handles:
            h.remove()
    if whole_layers:
        out = []
        for li in range(len(layers)):
            def patch_all(mod, args, li=li):
                return (means[li].expand_as(args[0]).clone(),) + tuple(args[1:])

            handle = layers[li].self_attn.o_proj.register_forward_pre_hook(patch_all)
            try:
                out.append(round(accuracy(model, input_ids, answer_ids), 4))
            finally:
                handle.remove()
        return out
    table = []
    for li in range(len(layers)):
        row = []
        for h in range(n_heads):
            sl = slice(h * hd, (h + 1) * hd)

            def patch(mod, args, li=li, sl=sl):
                x = args[0].clone()
                x[..., sl] = means[li][..., sl]
                return (x,) + tuple(args[1:])

            handle = layers[li].self_attn.o_proj.register_forward_pre_hook(patch)
            try:
                row.append(round(accuracy(model, input_ids, answer_ids), 4))
            finally:
                handle.remove()
        table.append(row)
    return table


def important_heads(table, clean_acc: float, min_drop: float = 0.05) -> list[list]:
    """Heads whose single mean-ablation lowers accuracy by at least ``min_drop``, largest drop first."""
    heads = [
        [li, h, round(clean_acc - a, 4)]
        for li, row in enumerate(table)
        for h, a in enumerate(row)
        if clean_acc - a >= min_drop
    ]
    return sorted(heads, key=lambda t: -t[2])


def evaluate(model, tokenizer, ids: Ids, n_boxes: int = N_BOXES, n: int = HELDOUT_N) -> dict:
    """All numbers a model card reports, on the held-out set (seed HELDOUT_SEED)."""
    x, ans, queried = template_prompts(tokenizer, n, n_boxes=n_boxes, seed=HELDOUT_SEED)
    ref, _, _ = template_prompts(tokenizer, 500, n_boxes=n_boxes, seed=HELDOUT_SEED + 1)
    acc = accuracy(model, x, ans)
    table = head_ablation(model, x, ans, ref)
    return {
        "accuracy": round(acc, 4),
        "accuracy_by_queried_position": per_position_accuracy(model, x, ans, queried, n_boxes),
        "absent_label": absent_label_stats(model, ids, x, n_boxes),
        "head_ablation_accuracy": table,
        "important_heads": important_heads(table, acc),
        "layer_ablation_accuracy": head_ablation(model, x, ans, ref, whole_layers=True),
    }


# ----------------------------------------------------------------------------------------------------------
# Saving: checkpoint, mechtest.json, curve PNG, model card
# ----------------------------------------------------------------------------------------------------------
def save_checkpoint(model, tokenizer, out: Path, meta: dict, curve: list) -> None:
    import torch

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model = model.to("cpu", dtype=torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "mechtest.json").write_text(json.dumps(meta, indent=2) + "\n")
    _plot_curve(curve, out / "training_curve.png", meta)
    (out / "README.md").write_text(model_card(meta))


def _plot_curve(curve: list, path: Path, meta: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is an optional extra
        return
    if not curve:
        return
    steps = [c[0] for c in curve]
    fig, ax1 = plt.subplots(figsize=(6.4, 3.6), dpi=80)
    ax1.plot(steps, [c[1] for c in curve], color="tab:blue", lw=1)
    ax1.set_xlabel("training step")
    ax1.set_ylabel("train loss (answers)", color="tab:blue")
    ax1.set_yscale("log")
    ax2 = ax1.twinx()
    ax2.plot(steps, [c[2] for c in curve], color="tab:red", lw=1)
    ax2.set_ylabel(f"validation accuracy ({meta['n_boxes']} boxes)", color="tab:red")
    ax2.set_ylim(0, 1.02)
    ax2.axhline(1 / meta["n_boxes"], color="grey", ls=":", lw=1)
    for s in meta.get("phase_boundaries", []):
        ax1.axvline(s, color="grey", ls="--", lw=1)
    ax1.set_title(f"zoo/{meta['name']}: loss and accuracy during training")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _head_table_md(table, clean: float) -> str:
    n_heads = len(table[0])
    lines = ["| layer | " + " | ".join(f"head {h}" for h in range(n_heads)) + " |",
             "| --- |" + " --- |" * n_heads]
    for li, row in enumerate(table):
        cells = [f"**{a:.3f}**" if clean - a >= 0.05 else f"{a:.3f}" for a in row]
        lines.append(f"| {li} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _absent_position_note(dist: list[float]) -> str:
    j = max(range(len(dist)), key=dist.__getitem__)
    if dist[j] >= 0.6:
        return (f"with no matching label the model falls back to box position {j}; with a present label "
                f"accuracy is flat across positions, so this fallback does not decide present-label queries")
    return "no positional default"


def _positional_note(shape: dict) -> str:
    if not shape.get("positional_init"):
        return ""
    heads = ", ".join(f"L0H{h} -> {d} back" for h, d in shape["positional_init"])
    return f" Layer-0 heads given a positional attention pattern at init (then trained freely): {heads}."


def model_card(meta: dict) -> str:
    s, ev, k = meta["shape"], meta, meta["n_boxes"]
    ab = ev["absent_label"]
    pos = ", ".join(f"{j}: {a:.3f}" for j, a in enumerate(ev["accuracy_by_queried_position"]))
    lay = ", ".join(f"layer {i} -> {a:.3f}" for i, a in enumerate(ev.get("layer_ablation_accuracy", [])))
    imp = ", ".join(f"L{l}H{h} (-{d:.3f})" for l, h, d in ev["important_heads"]) or "none >= 0.05"
    phases = "\n".join(
        f"- phase {i + 1}: {p['steps_done']} steps (max {p['max_steps']}), boxes per batch drawn from "
        f"{list(p['boxes'])}, {p['n_queries']} queries per sequence, batch {p['batch']}, AdamW lr {p['lr']} "
        f"(linear warm-up {p['warmup']} steps), weight decay {p['weight_decay']}; stopped by: {p['stop_reason']}"
        for i, p in enumerate(meta["phases"])
    )
    role = {
        "base": "the briefly trained model: clearly above chance, clearly below perfect (the role Llama-7B "
                "plays in the paper's comparison)",
        "finetuned": "`base` trained further on a related, harder task mix (more boxes, more queries per "
                     "sequence) -- the role of the fine-tuned model; it should keep and sharpen base's mechanism",
        "other": "an independently trained model of the same shape and tokenizer (another seed, so another "
                 "initialisation and data order) -- similar accuracy, its own heads",
    }[meta["name"]]
    init = f"initialised from `{meta['init_from']}`" if meta.get("init_from") else "trained from scratch"
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [mechtest, entity-tracking, tiny, llama]
---

# mechtest zoo: `{meta['name']}`

A tiny `LlamaForCausalLM` trained to do entity tracking on the paper's template with **{k} boxes**.
Role in the zoo: {role}.

Rebuild: `python -m tools.zoo build --only {meta['name']}` (deterministic given the seed; CPU, or CUDA when
present).

## Shape
- {s['num_hidden_layers']} layers, hidden size {s['hidden_size']}, {s['num_attention_heads']} attention heads
  (head dim {s['hidden_size'] // s['num_attention_heads']}, no GQA), MLP intermediate size {s['intermediate_size']},
  RoPE; vocabulary {meta['vocab_size']} (the project's word-level tokenizer, BOS prepended);
  {meta['n_params']:,} parameters, float32 safetensors; RoPE theta {s['rope_theta']:g}
  ({"input and output embeddings tied" if s['tie_word_embeddings'] else "untied embeddings"}).
- Initialisation: normal(0, {s['initializer_range']}) weights; every token embedding also gets one shared
  random direction (scale {s['embed_shared']} x the embedding std), and all objects / all box labels one more
  shared direction per word class (scale {s['embed_types']}), so that "attend to an object / a label" does not
  have to be learned token by token.{_positional_note(s)}

## Training data
Sequences of the template `The {{o1}} is in Box {{L1}}, the {{o2}} is in Box {{L2}}, ... . Box {{Lq}} contains the {{oq}}`,
objects drawn without replacement from the 85 shipped objects, labels from A-Z, followed by several queries
`Box L contains the o.` whose labels are drawn **with replacement** (so elimination is no shortcut); the
cross-entropy loss is put on every answer token. Batches are built as token ids and checked once to equal the
tokenizer's tokenization of the template text.

## Training
- seed {meta['train_seed']}, {init}; {meta['steps']} steps in total; wall time {meta['wall_time_s']:.0f} s
  on {meta['device']}.
{phases}
- Checkpoint selection uses a validation set (seed {VALID_SEED}, {VALID_N} prompts), never the held-out set.

![training curve](training_curve.png)

## Evaluation (held-out: {meta['heldout_n']} prompts, `make_dataset(tokenizer, {meta['heldout_n']}, n_boxes={k}, seed={meta['heldout_seed']})`)
Accuracy = argmax over the full vocabulary at the last prompt position equals the answer. Chance = 1/{k} = {1 / k:.3f}.

- **accuracy: {ev['accuracy']:.3f}**
- accuracy by queried box position: {pos}

### Binding, not a shortcut
Accuracy is close across queried box positions (above), so no position is a default answer. Replacing the
query label by a label that is absent from the context (same prompts; the model never saw absent labels in
training, so it does not abstain: a confident answer means it matched the most similar context label):

| query label | mean max prob. of a context object | mean prob. mass on context objects | mean entropy over context objects (bits, max {ab['max_entropy_bits']:.2f}) |
| --- | --- | --- | --- |
| present | {ab['present']['mean_max_prob_context_object']:.3f} | {ab['present']['mean_prob_mass_context_objects']:.3f} | {ab['present']['mean_entropy_bits_over_context_objects']:.3f} |
| absent | {ab['absent']['mean_max_prob_context_object']:.3f} | {ab['absent']['mean_prob_mass_context_objects']:.3f} | {ab['absent']['mean_entropy_bits_over_context_objects']:.3f} |

With an absent label the most probable context object sits at box positions
{', '.join(f'{j}: {f:.2f}' for j, f in enumerate(ab['absent']['argmax_position_distribution']))}
({_absent_position_note(ab['absent']['argmax_position_distribution'])}), and two different absent labels pick the same object in
{ab['absent']['same_choice_for_two_absent_labels']:.2f} of the prompts (1.0 would be a fixed default, 1/{k} = {1 / k:.2f} a
choice driven by the query label's identity).

### Per-head importance
Held-out accuracy after mean-ablating one head (its slice of the `o_proj` input replaced, at every position,
by its mean over 500 reference prompts of seed {meta['heldout_seed'] + 1}); bold = drop >= 0.05.

{_head_table_md(ev['head_ablation_accuracy'], ev['accuracy'])}

Important heads (drop >= 0.05): {imp}. Mean-ablating all heads of a layer at once: {lay}.
"""


# ----------------------------------------------------------------------------------------------------------
# Build
# ----------------------------------------------------------------------------------------------------------
def _device():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_one(name: str, out_root: Path, tokenizer, ids: Ids, *, steps: int | None, log,
              heldout_n: int = HELDOUT_N, seed: int | None = None) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    recipe = RECIPES[name] if seed is None else replace(RECIPES[name], seed=seed)
    dev = _device()
    t0 = time.time()
    if recipe.init_from:
        src = out_root / recipe.init_from
        if not (src / "config.json").exists():
            raise FileNotFoundError(f"{name} starts from {recipe.init_from}: build it first ({src} is missing)")
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
        prev = json.loads((src / "mechtest.json").read_text())
        curve = [tuple(c) for c in prev.get("curve", [])]
        step0 = prev["steps"]
        phases_meta = list(prev.get("phases", []))
        boundaries = list(prev.get("phase_boundaries", [])) + [step0]
    else:
        model = new_model(tokenizer, SHAPE, recipe.seed)
        curve, step0, phases_meta, boundaries = [], 0, [], []
    model.to(dev)
    v_ids, v_ans, _ = template_prompts(tokenizer, VALID_N, n_boxes=N_BOXES, seed=VALID_SEED)
    valid = (v_ids.to(dev), v_ans.to(dev))
    for i, phase in enumerate(recipe.phases):
        done, reason, _ = train_phase(
            model, ids, phase, seed=recipe.seed * 1000 + i, valid=valid, log=log, steps_override=steps,
            curve=curve, step0=step0, device=dev,
        )
        phases_meta.append({**asdict(phase), "steps_done": done, "stop_reason": reason, "model": name,
                            "seed": recipe.seed * 1000 + i})
        step0 += done
        if i < len(recipe.phases) - 1:
            boundaries.append(step0)
    wall = time.time() - t0
    model.to("cpu").eval()
    log(f"[{name}] trained {step0} steps in {wall:.0f}s; evaluating")
    ev = evaluate(model, tokenizer, ids, n=heldout_n)
    meta = {
        "task": "entity_tracking",
        "n_boxes": N_BOXES,
        "heldout_seed": HELDOUT_SEED,
        "heldout_n": heldout_n,
        "accuracy": ev["accuracy"],
        "accuracy_by_queried_position": ev["accuracy_by_queried_position"],
        "train_seed": recipe.seed,
        "steps": step0,
        "name": name,
        "init_from": recipe.init_from,
        "wall_time_s": round(wall + (json.loads((out_root / recipe.init_from / "mechtest.json").read_text())
                                     ["wall_time_s"] if recipe.init_from else 0.0), 1),
        "device": dev,
        "shape": asdict(SHAPE),
        "vocab_size": len(tokenizer),
        "n_params": sum(p.numel() for p in model.parameters()),
        "phases": phases_meta,
        "phase_boundaries": boundaries,
        "absent_label": ev["absent_label"],
        "head_ablation_accuracy": ev["head_ablation_accuracy"],
        "important_heads": ev["important_heads"],
        "curve": [list(c) for c in curve],
    }
    save_checkpoint(model, tokenizer, out_root / name, meta, curve)
    log(f"[{name}] held-out accuracy {ev['accuracy']:.3f} by position {ev['accuracy_by_queried_position']}; "
        f"important heads {ev['important_heads']}")
    return meta


def refresh_one(name: str, out_root: Path, tokenizer, ids: Ids, *, log) -> dict:
    """Re-run the evaluation of an existing checkpoint and rewrite mechtest.json, the card and the plot."""
    import torch
    from transformers import AutoModelForCausalLM

    d = out_root / name
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    meta = json.loads((d / "mechtest.json").read_text())
    ev = evaluate(model, tokenizer, ids, n_boxes=meta["n_boxes"], n=meta["heldout_n"])
    meta.update(ev)
    (d / "mechtest.json").write_text(json.dumps(meta, indent=2) + "\n")
    _plot_curve([tuple(c) for c in meta.get("curve", [])], d / "training_curve.png", meta)
    (d / "README.md").write_text(model_card(meta))
    log(f"[{name}] refreshed: accuracy {ev['accuracy']:.3f}, important heads {ev['important_heads']}")
    return meta


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(prog="python -m tools.zoo build", description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=NAMES, help="build one checkpoint (finetuned needs base in --out)")
    p.add_argument("--steps", type=int, help="override the step budget of every phase (smoke tests)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "fixtures" / "zoo"),
                   help="output root (default: the repository's fixtures/zoo)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--heldout-n", type=int, default=HELDOUT_N,
                   help=f"held-out prompts for the final evaluation (default {HELDOUT_N}; fewer for smoke tests)")
    p.add_argument("--seed", type=int, help="override the recipe's seed (with --only; for seed searches)")
    p.add_argument("--refresh", action="store_true",
                   help="do not train: re-evaluate existing checkpoints, rewrite mechtest.json, cards, plots")
    args = p.parse_args(argv)
    if args.seed is not None and not args.only:
        p.error("--seed needs --only")
    torch.set_num_threads(args.threads)
    from tools.zoo.vocab import build_tokenizer

    tokenizer = build_tokenizer()
    ids = Ids(tokenizer)
    check_batch_matches_tokenizer(tokenizer, ids)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, flush=True)

    for name in [args.only] if args.only else list(NAMES):
        if args.refresh:
            refresh_one(name, out, tokenizer, ids, log=log)
        else:
            build_one(name, out, tokenizer, ids, steps=args.steps, log=log, heldout_n=args.heldout_n,
                      seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
