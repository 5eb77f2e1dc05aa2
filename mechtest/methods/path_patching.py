"""Four-step path patching (spec section 4), a fast exact engine and a naive reference.

One measurement for sender head (l_s, h_s) (spec 4.3): run A on the base prompt with every head output at
positions >= P_start frozen to its clean value, except the sender at P_start, which takes its value from
the corrupt prompt; the sender's effect then reaches later layers through the residual stream and MLPs
only. Without receivers the score reads run A's logits; with receivers, run B patches only the
receivers' q (or v) at the receiver position with what run A computed there. The score is the relative
change of the answer's probability, ``(p - p_clean) / p_clean``, averaged over prompts.

Why the fast engine is exact: in all four steps the receiver position equals the sender position P, and
nothing before P can change. In run A every head output at P is frozen, so attention is irrelevant there
and the run reduces to the single token at P (embedding + residual + MLPs, position id P), with no
prefix at all. Run B changes nothing before P either, so it recomputes only positions >= P on top of the
clean run's key/value cache. Many senders share one forward pass on the batch axis. ``naive=True`` keeps
the obviously-correct implementation (one full forward per sender) for tests and benchmarks.
"""

from __future__ import annotations

import inspect
import random
from contextlib import contextmanager
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from mechtest.errors import MechtestError
from mechtest.forward import _accepts_logits_to_keep, _progress
from mechtest.heads import _get, check_heads, hooked, kv_head_of, masked_replace, n_heads_at, record, run_and_read

POSITIONS = ("last", "query_label", "query_context")


@dataclass(frozen=True)
class Step:
    """One path-patching step: where senders are patched and which receivers (if any) read them."""

    group: str
    position: str  # "last" | "query_label" | "query_context"; the receivers read at the same position
    receivers: tuple[tuple[int, int], ...] = ()
    receiver_site: str | None = None  # "q" | "v"; None: direct path to the logits


@dataclass
class StepResult:
    """Scores of every head as a sender: a (layers, heads) matrix, most negative = most important."""

    step: Step
    scores: torch.Tensor
    n_prompts: int
    seed: int

    def top(self, k: int, exclude: Sequence[tuple[int, int]] = ()) -> list[tuple[int, int]]:
        """The k heads with the most negative scores (spec 4.3), ties broken by head order."""
        flat = self.scores.flatten()
        order = torch.argsort(flat, stable=True)
        n_heads = self.scores.shape[1]
        skip = set(map(tuple, exclude))
        heads = [divmod(int(i), n_heads) for i in order]
        return [h for h in heads if h not in skip][:k]


@dataclass
class PathPatchingResult:
    steps: dict[str, StepResult] = field(default_factory=dict)

    def __getitem__(self, group: str) -> StepResult:
        return self.steps[group]


# Spec 4.4: the four steps, in discovery order, with the paper's Llama receiver counts as defaults.
DEFAULT_RECEIVERS = {"pos_transmitter": 20, "pos_detector": 5, "struct_reader": 10}


def path_patching(model, base, corrupt, *, receivers: dict[str, int] | None = None, seed: int = 0,
                  batch_size: int = 100, naive: bool = False, progress: bool = True,
                  groups: Sequence[str] = ("value_fetcher", "pos_transmitter", "pos_detector", "struct_reader"),
                  ) -> PathPatchingResult:
    """Run the steps of spec 4.4 in order; each step's top-k heads are the next step's receivers."""
    k = {**DEFAULT_RECEIVERS, **(receivers or {})}
    plan = [
        ("value_fetcher", "last", None, None),
        ("pos_transmitter", "last", "value_fetcher", "q"),
        ("pos_detector", "query_label", "pos_transmitter", "v"),
        ("struct_reader", "query_context", "pos_detector", "v"),
    ]
    result = PathPatchingResult()
    for group, position, previous, site in plan:
        if group not in groups:
            continue
        recv: tuple = ()
        if previous is not None:
            if previous not in result.steps:
                raise MechtestError(f"path-patching step {group!r} needs the scores of step {previous!r}")
            recv = tuple(result.steps[previous].top(k[group]))
        step = Step(group, position, recv, site)
        result.steps[group] = patch_step(model, base, corrupt, step, seed=seed, batch_size=batch_size,
                                         naive=naive, progress=progress)
    return result


def patch_step(model, base, corrupt, step: Step, *, seed: int = 0, batch_size: int = 100,
               naive: bool = False, senders: Sequence[tuple[int, int]] | None = None,
               progress: bool = True, max_rows: int = 4096, memory_budget: int = 512 * 2**20) -> StepResult:
    """Score every head (or ``senders``) as a sender for one step; returns a (layers, heads) matrix.

    The fast engine puts up to ``max_rows`` (sender, prompt) rows in one forward pass, fewer when their
    key/value prefix and logits would exceed ``memory_budget`` bytes.
    """
    _validate(model, base, corrupt, step)
    senders = [(l, h) for l in range(model.n_layers) for h in range(model.n_heads)] if senders is None \
        else [tuple(s) for s in senders]
    check_heads(model, senders)
    p_start = _positions(base, step.position)
    p_corr = _corrupt_positions(corrupt, step.position, seed)
    totals = torch.zeros(len(senders), dtype=torch.float64)
    n = len(base)
    starts = list(range(0, n, batch_size))
    bar = _progress(starts, f"path patching {step.group}" if progress else None, len(starts))
    for start in bar:
        sl = slice(start, min(start + batch_size, n))
        ctx = _BatchContext.build(model, base, corrupt, sl, p_start[sl], p_corr[sl], step, need_kv=not naive)
        if naive:
            totals += _naive_scores(model, ctx, step, senders).sum(dim=1).double()
        else:
            totals += _fast_scores(model, ctx, step, senders, max_rows, memory_budget).sum(dim=1).double()
    scores = torch.zeros(model.n_layers, model.n_heads)
    for (l, h), total in zip(senders, totals):
        scores[l, h] = float(total / n)
    return StepResult(step=step, scores=scores, n_prompts=n, seed=seed)


# --- shared per-batch state ------------------------------------------------------------------------

@dataclass
class _BatchContext:
    ids: torch.Tensor          # (b, seq) base tokens
    answers: torch.Tensor      # (b,)
    last: torch.Tensor         # (b,)
    p_start: torch.Tensor      # (b,)
    clean: torch.Tensor        # (layers, b, seq, heads, dim) head outputs of the base run
    corrupt_at: torch.Tensor   # (layers, b, heads, dim) corrupt head outputs at P_corr
    p_clean: torch.Tensor      # (b,) probability of the answer in the clean run
    kv: list | None            # clean run's per-layer (key, value), each (b, kv_heads, seq, dim)
    resid: torch.Tensor | None = None  # (layers, b, seq, d_model) clean input of each layer

    @classmethod
    def build(cls, model, base, corrupt, sl, p_start, p_corr, step, need_kv):
        ids = base.input_ids[sl].to(model.device)
        b = ids.shape[0]
        store: dict = {}
        edits = {("head_out", l): record(store, l) for l in range(model.n_layers)}
        with torch.no_grad(), hooked(model, edits):
            out = model.hf(input_ids=ids, use_cache=need_kv, output_hidden_states=need_kv)
        clean = torch.stack([store[l] for l in range(model.n_layers)])
        resid = torch.stack(out.hidden_states[:model.n_layers]) if need_kv else None
        rows = torch.arange(b, device=model.device)
        last = base.last_pos[sl].to(model.device)
        answers = base.answer_ids[sl].to(model.device)
        probs = out.logits[rows, last].float().softmax(-1)[rows, answers]
        corrupt_acts = run_and_read(model, corrupt.input_ids[sl], sites=("head_out",))
        p_corr = p_corr.to(model.device)
        corrupt_at = torch.stack([corrupt_acts[("head_out", l)][rows, p_corr] for l in range(model.n_layers)])
        kv = _cache_tensors(_output_cache(out)) if need_kv else None
        return cls(ids, answers, last, p_start.to(model.device), clean, corrupt_at, probs, kv, resid)


# --- naive reference: one full forward (or two) per sender ------------------------------------------

def _naive_scores(model, ctx: _BatchContext, step: Step, senders) -> torch.Tensor:
    b, seq = ctx.ids.shape
    rows = torch.arange(b, device=ctx.ids.device)
    freeze = torch.arange(seq, device=ctx.ids.device)[None, :] >= ctx.p_start[:, None]  # (b, seq)
    out = torch.empty(len(senders), b)
    for i, (ls, hs) in enumerate(senders):
        edits = {}
        for l in range(model.n_layers):
            values = ctx.clean[l]
            if l == ls:
                values = values.clone()
                values[rows, ctx.p_start, hs] = ctx.corrupt_at[l, :, hs]
            edits[("head_out", l)] = masked_replace(freeze[:, :, None], values)
        recorded: dict = {}
        for l in _receiver_layers(model, step):
            edits[(step.receiver_site, l)] = record(recorded, l)
        with torch.no_grad(), hooked(model, edits):
            logits = model.hf(input_ids=ctx.ids, use_cache=False).logits
        if step.receivers:
            b_edits = {}
            for l, heads in _receivers_by_layer(model, step).items():
                values = recorded[l][rows, ctx.p_start][:, heads]
                b_edits[(step.receiver_site, l)] = _set_at(heads, ctx.p_start, values)
            with torch.no_grad(), hooked(model, b_edits):
                logits = model.hf(input_ids=ctx.ids, use_cache=False).logits
        p = logits[rows, ctx.last].float().softmax(-1)[rows, ctx.answers]
        out[i] = ((p - ctx.p_clean) / ctx.p_clean).cpu()
    return out


# --- fast exact engine -------------------------------------------------------------------------------

def _fast_scores(model, ctx: _BatchContext, step: Step, senders, max_rows, budget) -> torch.Tensor:
    out = torch.zeros(len(senders), ctx.ids.shape[0])
    # A sender changes nothing in its own or earlier layers, so with every receiver at or below the
    # sender's layer run B is the clean run: the score is exactly 0 and needs no forward pass.
    top = max((l for l, _ in step.receivers), default=None)
    active = [i for i, (l, _) in enumerate(senders) if top is None or l < top]
    groups = torch.stack([ctx.p_start, ctx.last], dim=1)
    for p, last in torch.unique(groups, dim=0).tolist():
        ex = torch.nonzero((ctx.p_start == p) & (ctx.last == last)).flatten()
        chunk = _senders_per_chunk(model, step, len(ex), p, last - p + 1, max_rows, budget)
        for s0 in range(0, len(active), chunk):
            idx = active[s0:s0 + chunk]
            scores = _fast_chunk(model, ctx, step, [senders[i] for i in idx], ex, p, last).cpu()
            out[torch.tensor(idx)[:, None], ex.cpu()[None, :]] = scores
    return out


def _fast_chunk(model, ctx: _BatchContext, step: Step, senders, ex: torch.Tensor, p: int, last: int) -> torch.Tensor:
    """Scores (len(senders), len(ex)) for examples ``ex`` that share P_start = p and the last position."""
    n_s, n_e = len(senders), len(ex)
    rows = n_s * n_e
    ex_rows = ex.repeat(n_s)                                   # row r = i * n_e + e: sender i, example e
    token = ctx.ids[ex_rows, p][:, None]
    position = torch.full((rows, 1), p, device=ex.device)

    # Run A: the token at p alone, every head output frozen, the sender's taking the corrupt value.
    edits = {}
    for l in range(model.n_layers):
        values = ctx.clean[l][ex_rows, p].clone()             # (rows, heads, dim)
        for i, (ls, hs) in enumerate(senders):
            if ls == l:
                values[i * n_e:(i + 1) * n_e, hs] = ctx.corrupt_at[l, ex, hs]
        edits[("head_out", l)] = _constant(values[:, None])
    recorded: dict = {}
    layers = _receiver_layers(model, step)
    for l in layers:
        edits[(step.receiver_site, l)] = record(recorded, l)
    if layers:  # nothing above the last receiver matters in run A: stop the forward pass there
        edits[(step.receiver_site, layers[-1])] = [record(recorded, layers[-1]), _stop_forward]
    first = min(l for l, _ in senders)
    try:
        with torch.no_grad(), hooked(model, edits), _start_at_layer(model, first, ctx.resid[first, ex_rows, p][:, None]):
            out = model.hf(input_ids=token, position_ids=position, use_cache=False)
    except _StopForward:
        pass
    if not step.receivers:
        prob = out.logits[:, -1].float().softmax(-1)[torch.arange(rows, device=ex.device), ctx.answers[ex_rows]]
        prob = prob.view(n_s, n_e)
    else:
        prob = _run_b(model, ctx, step, recorded, ex, p, last, n_s)
    return (prob - ctx.p_clean[ex][None]) / ctx.p_clean[ex][None]


def _run_b(model, ctx: _BatchContext, step: Step, recorded: dict, ex, p: int, last: int, n_s: int) -> torch.Tensor:
    """Run B for n_s senders at once: positions p..last on top of each example's clean key/value prefix.

    Short suffixes are packed on the sequence axis: each example's positions are repeated n_s times
    (block i = sender i) over ONE copy of its prefix, and a 4D mask lets every block see the prefix and,
    causally, only itself. Long suffixes (longer than the prefix) would make that mask's wasted attention
    dominate, so there each (sender, example) is its own row over a copied prefix. Either way each block
    or row computes exactly the suffix of a separate run B whose receivers read sender i's q/v at p.
    """
    n_e, s = len(ex), last - p + 1
    device = ctx.ids.device
    # receivers below every sender of the chunk were not run in run A: their q/v are the clean ones,
    # which is what run B computes for them anyway
    patched = {l: heads for l, heads in _receivers_by_layer(model, step).items() if l in recorded}
    first = min(patched)
    if _packed(p, s):
        starts = torch.arange(n_s, device=device) * s
        ids = ctx.ids[ex, p:last + 1].repeat(1, n_s)
        positions = torch.arange(p, last + 1, device=device).repeat(n_s)[None].expand(n_e, -1)
        qi = torch.arange(n_s * s, device=device)
        own_block = (qi[:, None] // s == qi[None, :] // s) & (qi[None, :] <= qi[:, None])
        allowed = torch.cat([torch.ones(n_s * s, p, dtype=torch.bool, device=device), own_block], dim=1)
        mask = torch.zeros(allowed.shape, dtype=model.dtype, device=device)
        mask = mask.masked_fill(~allowed, torch.finfo(model.dtype).min)[None, None].expand(n_e, 1, -1, -1)
        rows, keep = ex, starts + (last - p)
        hidden = ctx.resid[first][ex, p:last + 1].repeat(1, n_s, 1)

        def values(l, heads):  # recorded rows are sender-major: (n_s * n_e) -> (n_e, n_s)
            return recorded[l][:, 0][:, heads].reshape(n_s, n_e, len(heads), -1).transpose(0, 1)
    else:
        starts = torch.zeros(1, dtype=torch.long, device=device)
        rows = ex.repeat(n_s)
        ids = ctx.ids[rows, p:last + 1]
        positions = torch.arange(p, last + 1, device=device)[None].expand(len(rows), -1)
        mask, keep = None, starts + (last - p)
        hidden = ctx.resid[first][rows, p:last + 1]

        def values(l, heads):
            return recorded[l][:, 0][:, heads][:, None]

    b_edits = {(step.receiver_site, l): _set_blocks(heads, starts, values(l, heads)) for l, heads in patched.items()}
    cache = _make_cache([(k[rows, :, :p], v[rows, :, :p]) for k, v in ctx.kv])
    kwargs = {"logits_to_keep": keep} if _accepts_logits_to_keep(model) else {}
    with torch.no_grad(), hooked(model, b_edits), _start_at_layer(model, first, hidden):
        out = model.hf(input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=True,
                       **{_cache_kwarg(model): cache}, **kwargs)
    logits = (out.logits if kwargs else out.logits[:, keep]).float()
    prob = logits.softmax(-1).gather(-1, ctx.answers[rows][:, None, None].expand(-1, logits.shape[1], 1))[..., 0]
    return prob.transpose(0, 1) if _packed(p, s) else prob.view(n_s, n_e)


def _packed(p: int, s: int) -> bool:
    return s <= p


# --- helpers -------------------------------------------------------------------------------------------

@contextmanager
def _start_at_layer(model, layer: int, hidden: torch.Tensor):
    """Run only layers >= ``layer``, feeding ``hidden`` (the clean input of that layer) to the first.

    Exact when nothing below ``layer`` differs from the clean run at the positions computed: a sender
    changes nothing below its own layer, and run B nothing below its lowest receiver.
    """
    if layer == 0:
        yield
        return
    parent_path, _, name = model.arch.layers.rpartition(".")
    parent = _get(model.hf, parent_path)
    layers = getattr(parent, name)

    def feed(module, args, kwargs):
        if args:
            return (hidden.to(args[0].dtype),) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden.to(kwargs["hidden_states"].dtype)}

    handle = layers[layer].register_forward_pre_hook(feed, with_kwargs=True)
    setattr(parent, name, torch.nn.ModuleList(list(layers)[layer:]))
    try:
        yield
    finally:
        setattr(parent, name, layers)
        handle.remove()


class _StopForward(Exception):
    """Raised from a hook to end a forward pass whose remaining layers cannot matter."""


def _stop_forward(x):
    raise _StopForward


def _senders_per_chunk(model, step: Step, n_e: int, p: int, s: int, max_rows: int, budget: int) -> int:
    """Senders per forward pass: at most ``max_rows`` rows, and attention scores, copies and logits within ``budget``.

    Packed, n_s senders make each block attend to p + n_s * s keys instead of p + s. About as many packed
    keys as prefix keys bounds that waste, but each pass should also carry enough tokens (~2,048) to
    amortise its fixed cost; the larger of the two wins.
    """
    n_s = max(1, max_rows // n_e)
    packed = step.receivers and _packed(p, s)
    if packed:
        n_s = min(n_s, max(-(-p // s), -(-2048 // (n_e * s))))
    element = torch.finfo(model.dtype).bits // 8
    while n_s > 1:
        logits = n_e * n_s * model.vocab_size * 4 * 2
        if packed:
            work = n_e * model.n_heads * (n_s * s) * (p + n_s * s) * 4 * 3  # attention scores
        elif step.receivers:  # the copied prefix, once when built and once when the suffix is appended
            work = n_e * n_s * 2 * 2 * model.n_layers * model.n_kv_heads * (p + s) * model.head_dim * element
        else:
            work = 0
        if logits + work <= budget:
            break
        n_s //= 2
    return n_s


def _constant(values: torch.Tensor):
    def fn(x):
        return values.to(x.dtype)

    return fn


def _set_blocks(heads, starts, values):
    """Replace ``heads`` at the block starts: ``values`` (batch, blocks, len(heads), dim)."""

    def fn(x):
        out = x.clone()
        index = (slice(None), starts[:, None], torch.as_tensor(heads, device=x.device)[None, :])
        out[index] = values.to(x.dtype)
        return out

    return fn


def _set_at(heads, positions, values):
    def fn(x):
        out = x.clone()
        rows = torch.arange(x.shape[0], device=x.device)[:, None]
        out[rows, positions[:, None], torch.as_tensor(heads, device=x.device)[None, :]] = values.to(x.dtype)
        return out

    return fn


def _receivers_by_layer(model, step: Step) -> dict[int, list[int]]:
    """Receiver heads per layer at the receiver site; a v receiver under GQA is its shared kv head."""
    by_layer: dict[int, list[int]] = {}
    for l, h in step.receivers:
        head = kv_head_of(model, int(h)) if step.receiver_site in ("k", "v") else int(h)
        if head not in by_layer.setdefault(int(l), []):
            by_layer[int(l)].append(head)
    return by_layer


def _receiver_layers(model, step: Step) -> list[int]:
    return sorted(_receivers_by_layer(model, step))


def _positions(dataset, position: str) -> torch.Tensor:
    if position == "last":
        return dataset.last_pos.clone()
    if position == "query_label":
        return dataset.query_label_pos.clone()
    if position == "query_context":
        return dataset.query_context_pos.clone()
    raise MechtestError(f"unknown position class {position!r}; use one of {', '.join(POSITIONS)}")


def _corrupt_positions(corrupt, position: str, seed: int) -> torch.Tensor:
    """P_corr of spec 4.3: for the context label, a uniformly random box-label position per example."""
    if position != "query_context":
        return _positions(corrupt, position)
    rng = random.Random(seed)
    idx = torch.tensor([rng.randrange(corrupt.n_boxes) for _ in range(len(corrupt))])
    return corrupt.label_pos[torch.arange(len(corrupt)), idx]


def _validate(model, base, corrupt, step: Step) -> None:
    if len(base) != len(corrupt):
        raise MechtestError(f"base and corrupt prompt sets differ in size: {len(base)} vs {len(corrupt)}")
    if base.input_ids.shape != corrupt.input_ids.shape:
        raise MechtestError("base and corrupt prompts must share one token layout (same length)")
    if not bool(base.attention_mask.bool().all()):
        raise MechtestError("path patching needs unpadded prompts of one layout")
    _positions(base, step.position)
    if step.receivers:
        if step.receiver_site not in ("q", "v"):
            raise MechtestError(f"receiver site must be 'q' or 'v', not {step.receiver_site!r}")
        check_heads(model, step.receivers)
        n_heads_at(model, step.receiver_site)


def _cache_kwarg(model) -> str:
    """transformers 5 renamed ``past_key_values`` to ``cache``; accept both generations."""
    return "cache" if "cache" in inspect.signature(type(model.hf).forward).parameters else "past_key_values"


def _output_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _cache_tensors(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer (key, value) tensors of a transformers cache, across cache API generations."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    if hasattr(cache, "key_cache"):
        return list(zip(cache.key_cache, cache.value_cache))
    return [tuple(kv[:2]) for kv in cache]


def _make_cache(kv: list[tuple[torch.Tensor, torch.Tensor]]):
    from transformers import DynamicCache

    try:
        return DynamicCache(ddp_cache_data=kv)
    except TypeError:  # transformers < 4.56
        return DynamicCache.from_legacy_cache(tuple(kv))
