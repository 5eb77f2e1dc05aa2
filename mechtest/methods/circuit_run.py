"""The circuit run of mean ablation (spec 5.1), computed only where a prompt can matter.

With every head but the circuit's mean-ablated, a position that holds no circuit node has *every* head
output replaced by its per-position mean: its residual stream, and so its keys and values in every layer,
depend on its own token and position alone. Those positions are computed once per distinct (token,
position) over all the prompts, as one-token rows; only the node positions and the answer position run
with attention, over a cache assembled from those rows, under a 4D mask that keeps the causal order.
On 3-box prompts of 25 tokens that is 3 positions per prompt plus a few hundred distinct rows instead of
25 positions per prompt. Equal to the plain masked run (``correct`` with ``ablation_edits``) up to float
rounding: tested against it on every architecture.
"""

from __future__ import annotations

import torch

from mechtest.compat import accepts_logits_to_keep, cache_kwarg, cache_tensors, make_cache
from mechtest.forward import check_fits, progress_bar
from mechtest.heads import StopForward, hooked, masked_replace, stop_forward
from mechtest.methods.circuits import Circuit, node_positions
from mechtest.methods.path_patching.batch import constant, fused_attention
from mechtest.tasks.registry import task_of

ROWS = 1024  # one-token rows per forward pass


def circuit_logits(model, circuit: Circuit, dataset, means: torch.Tensor, *, batch_size: int = 50,
                   progress: str | None = None) -> torch.Tensor:
    """(n, vocab) float32 logits at the last position with every head but ``circuit``'s nodes mean-ablated.

    ``progress`` labels two lines, each shown only when its phase runs long: the shared rows, then the prompts."""
    check_fits(model, dataset)
    circuit.check(model)
    circuit.for_task(task_of(dataset).name)
    ids, last = dataset.input_ids, dataset.last_pos
    seq = ids.shape[1]
    at = {g: node_positions(dataset, g) for g in circuit.group_names if circuit.heads(g)}
    queries = [sorted({int(p[i]) for p in at.values() if int(p[i]) <= int(last[i])} | {int(last[i])})
               for i in range(len(dataset))]
    others = [sorted(set(range(int(last[i]))) - set(q)) for i, q in enumerate(queries)]
    table, index = _token_rows(model, ids, others, means[:, :seq], progress)
    out = torch.empty(len(dataset), model.vocab_size)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, (q, o) in enumerate(zip(queries, others)):
        by_shape.setdefault((len(q), len(o)), []).append(i)
    keep = {tuple(n) for n in circuit.nodes}
    parts = [rows[s0:s0 + batch_size] for rows in by_shape.values() for s0 in range(0, len(rows), batch_size)]
    for part in progress_bar(parts, progress, len(parts)):
        out[part] = _query_run(model, ids, part, [queries[i] for i in part], [others[i] for i in part],
                               table, index, means, keep, at).cpu()
    return out


def _token_rows(model, ids, others, means, progress):
    """Each distinct (token, position) of the ablated positions run alone: per-layer keys and values,
    (rows, kv_heads, 1, dim), and the row of every (token, position)."""
    index: dict[tuple[int, int], int] = {}
    for i, positions in enumerate(others):
        for j in positions:
            index.setdefault((int(ids[i, j]), j), len(index))
    pairs = torch.tensor(list(index), dtype=torch.long).view(-1, 2)
    keys: list[list[torch.Tensor]] = [[] for _ in range(model.n_layers)]
    values: list[list[torch.Tensor]] = [[] for _ in range(model.n_layers)]
    starts = range(0, len(pairs), ROWS)
    for s0 in progress_bar(starts, progress, len(starts)):
        chunk = pairs[s0:s0 + ROWS].to(model.device)
        token, position = chunk[:, :1], chunk[:, 1:]
        edits = {("head_out", l): constant(means[l, chunk[:, 1]][:, None]) for l in range(model.n_layers)}
        edits[("head_out", model.n_layers - 1)] = [edits[("head_out", model.n_layers - 1)], stop_forward]
        cache = make_cache([])
        try:  # the last layer's keys and values are in the cache once its heads have run
            with torch.no_grad(), hooked(model, edits):
                model.hf(input_ids=token, position_ids=position, use_cache=True, **{cache_kwarg(model): cache})
        except StopForward:
            pass
        for l, (k, v) in enumerate(cache_tensors(cache)):
            keys[l].append(k)
            values[l].append(v)
    table = [(torch.cat(k), torch.cat(v)) for k, v in zip(keys, values)] if len(pairs) else None
    return table, index


def _query_run(model, ids, rows, queries, others, table, index, means, keep, at) -> torch.Tensor:
    """The query positions of ``rows`` (one shape) over their assembled caches: last-position logits."""
    device = model.device
    b, n_q, n_o = len(rows), len(queries[0]), len(others[0])
    q_pos = torch.tensor(queries, device=device)
    o_pos = torch.tensor(others, device=device).view(b, n_o)
    tokens = ids[rows].to(device).gather(1, q_pos)
    kv = []
    if n_o:
        lookup = torch.tensor([[index[(int(ids[i, j]), j)] for j in o] for i, o in zip(rows, others)], device=device)
        kv = [(k[lookup].squeeze(3).transpose(1, 2), v[lookup].squeeze(3).transpose(1, 2)) for k, v in table]
    allowed = torch.cat([o_pos[:, None, :] < q_pos[:, :, None], q_pos[:, None, :] <= q_pos[:, :, None]], dim=2)
    mask = torch.zeros(allowed.shape, dtype=model.dtype, device=device)
    mask = mask.masked_fill(~allowed, torch.finfo(model.dtype).min)[:, None]
    ablated = torch.ones(model.n_layers, b, n_q, model.n_heads, dtype=torch.bool)
    for group, l, h in keep:
        ablated[l, :, :, h] &= q_pos.cpu() != at[group][rows][:, None]
    edits = {("head_out", l): masked_replace(ablated[l], means[l][q_pos]) for l in range(model.n_layers)
             if ablated[l].any()}
    kwargs = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
    cache = {cache_kwarg(model): make_cache(kv)} if n_o else {}
    with torch.no_grad(), hooked(model, edits), fused_attention(model):
        out = model.hf(input_ids=tokens, position_ids=q_pos, attention_mask=mask, use_cache=bool(n_o),
                       **cache, **kwargs)
    return out.logits[:, -1].float()
