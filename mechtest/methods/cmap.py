"""Cross-model activation patching, CMAP (spec 7): run one model with another model's head outputs.

Both models read the same prompts; for each patched node (layer, head) at its group's position (value
fetcher and position transmitter at the last token, position detector at the query label, structure
reader at the query label's context occurrence), the receiving model's head output is replaced by the
donor's at the same layer, head and position, and the receiving model computes everything else.

What is transferred, as in the paper (spec 7.3, quirk Q13), is the head output *before* the output
projection W_O: the receiver's own W_O is applied to it, so a donor's changes to W_O are not carried
over. ``transfer="head_contribution"`` is the labelled post-W_O variant: the receiver's output projection
sees its own inputs, and the donor head's contribution ``W_O^donor z^donor`` replaces the receiver's
``W_O z`` for that head (the projection bias stays the receiver's).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from mechtest.compat import accepts_logits_to_keep, cache_kwarg, cache_tensors, make_cache, output_cache
from mechtest.errors import CircuitError, MechtestError
from mechtest.forward import check_fits, dataset_logits, last_logits, progress_bar
from mechtest.heads import attention_module, hooked, masked_replace, record
from mechtest.methods.circuits import Circuit, load_circuit, node_positions
from mechtest.measure import Measurement, proportion

from mechtest.errors import ModelMismatchError
from mechtest.spec import CMAP_TRANSFERS as TRANSFERS


def check_compatible(model, other) -> None:
    """Raise ``ModelMismatchError`` naming the first difference in head shape or tokenizer."""
    shape = (model.n_layers, model.n_heads, model.head_dim)
    other_shape = (other.n_layers, other.n_heads, other.head_dim)
    if shape != other_shape:
        raise ModelMismatchError(f"{model.name!r} has {model.describe_shape()} but {other.name!r} has "
                                 f"{other.describe_shape()}: heads cannot be matched by index")
    vocab, other_vocab = model.tokenizer.get_vocab(), other.tokenizer.get_vocab()
    if vocab != other_vocab:
        if len(vocab) != len(other_vocab):
            detail = f"{len(vocab)} vs {len(other_vocab)} tokens"
        else:
            token = next(t for t in sorted(vocab) if other_vocab.get(t) != vocab[t])
            detail = f"token {token!r} is id {vocab[token]} in one and {other_vocab.get(token)} in the other"
        raise ModelMismatchError(f"{model.name!r} and {other.name!r} have different tokenizers ({detail}): "
                                 "the same prompt would not give the same token positions")


def cmap_correct(model, donor, dataset, *, circuit: Circuit | str | None = None, group: str | None = None,
                 transfer: str = "head_output", batch_size: int = 50, progress: bool = True,
                 donor_hits: list | None = None, own_hits: list | None = None) -> np.ndarray:
    """Per prompt: is ``model`` correct with ``donor``'s head outputs patched in?

    ``circuit=None`` patches every head at every position; a circuit patches its nodes at their
    group positions; ``group`` restricts that to one group of the circuit. ``donor_hits``, a list, receives
    the donor's own per-prompt correctness batch by batch: its run reads the head outputs anyway, so a
    verdict needs no second pass over the candidate for its accuracy. ``own_hits`` likewise receives
    ``model``'s own: its clean run then also serves the patched run, which continues it from each prompt's
    first patched position (nothing before that position can differ), so on prompts of one layout the base's
    accuracy and CMAP together cost less than one pass each.
    """
    check_compatible(model, donor)
    if transfer not in TRANSFERS:
        raise MechtestError(f"unknown CMAP transfer {transfer!r}; use one of {', '.join(TRANSFERS)}")
    nodes = _nodes(model, circuit, group)
    layers = sorted({l for _, l, _ in nodes}) if nodes is not None else list(range(model.n_layers))

    def edits_for_batch(sl: slice):
        mask = _node_mask(model, dataset, sl, nodes)
        donor_acts: dict = {}
        logits = last_logits(donor, dataset.input_ids[sl], dataset.last_pos[sl], dataset.attention_mask[sl],
                             {("head_out", l): record(donor_acts, l) for l in layers})
        if donor_hits is not None:
            donor_hits.append((logits.argmax(-1).cpu() == dataset.answer_ids[sl]).numpy())
        return {l: (mask[l], donor_acts[l]) for l in layers if mask[l].any()}

    desc = f"cmap {donor.name}->{model.name}" if progress else None
    if own_hits is not None and transfer == "head_output" and bool(dataset.attention_mask.bool().all()):
        check_fits(model, dataset)
        patched = []
        starts = range(0, len(dataset), batch_size)
        for start in progress_bar(starts, desc, len(starts)):
            sl = slice(start, min(start + batch_size, len(dataset)))
            patches = edits_for_batch(sl)
            own, logits = _continued(model, dataset.input_ids[sl], dataset.last_pos[sl], patches)
            own_hits.append((own.argmax(-1).cpu() == dataset.answer_ids[sl]).numpy())
            patched.append(logits.cpu())
        return (torch.cat(patched).argmax(-1) == dataset.answer_ids).numpy()
    if own_hits is not None:
        own_hits.append((dataset_logits(model, dataset, batch_size=batch_size).argmax(-1) == dataset.answer_ids).numpy())
    if transfer == "head_output":
        def pre_wo(sl: slice):
            return {("head_out", l): masked_replace(m, v) for l, (m, v) in edits_for_batch(sl).items()}

        logits = dataset_logits(model, dataset, batch_size=batch_size, edits_for_batch=pre_wo, progress=desc)
    else:
        chunks = []
        for start in range(0, len(dataset), batch_size):
            sl = slice(start, min(start + batch_size, len(dataset)))
            with _contributions(model, donor, edits_for_batch(sl)):
                chunks.append(dataset_logits(model, dataset[sl], batch_size=batch_size))
        logits = torch.cat(chunks) if chunks else torch.empty(0, model.vocab_size)
    return (logits.argmax(-1) == dataset.answer_ids).numpy()


def cmap(model, donor, dataset, *, circuit: Circuit | str | None = None, group: str | None = None,
         transfer: str = "head_output", batch_size: int = 50, seed: int = 0, progress: bool = True) -> Measurement:
    """Accuracy of ``model`` with ``donor``'s head outputs patched in (spec 7), with a bootstrap interval."""
    hits = cmap_correct(model, donor, dataset, circuit=circuit, group=group, transfer=transfer,
                        batch_size=batch_size, progress=progress)
    what = "all heads" if circuit is None else (load_circuit(circuit).name or "circuit")
    what += f"/{group}" if group else ""
    return proportion("cmap_accuracy", hits, seed=seed, model=model.name, donor=donor.name, patched=what,
                      transfer=transfer)


# --- internals -------------------------------------------------------------------------------------

def _nodes(model, circuit, group) -> list[tuple[str, int, int]] | None:
    if circuit is None:
        if group is not None:
            raise CircuitError("give a circuit to patch one of its groups")
        return None
    circuit = load_circuit(circuit)
    circuit.check(model)
    if group is not None:
        if group not in circuit.group_names:
            raise CircuitError(f"unknown group {group!r}; groups are {', '.join(circuit.group_names)}")
        nodes = [n for n in circuit.nodes if n[0] == group]
    else:
        nodes = circuit.nodes
    if not nodes:
        raise CircuitError(f"circuit {circuit.name!r} has no head to patch" + (f" in group {group!r}" if group else ""))
    return nodes


def _continued(model, ids: torch.Tensor, last: torch.Tensor, patches: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Last-position logits of one batch: ``model``'s clean run, and the run with ``patches`` ({layer: (mask
    (b, seq, heads), values)} of head outputs) computed only from each row's first patched position on, over
    the clean run's keys and values. Exact: a head output changed at position t changes nothing before t."""
    device = model.device
    ids, last = ids.to(device), last.to(device)
    b, seq = ids.shape
    fits = accepts_logits_to_keep(model)
    with torch.no_grad():
        out = model.hf(input_ids=ids, use_cache=True, **({"logits_to_keep": seq - int(last.min())} if fits else {}))
    rows = torch.arange(b, device=device)
    own = out.logits[rows, last - (seq - out.logits.shape[1])].float()
    kv = cache_tensors(output_cache(out))
    touched = torch.zeros(b, seq, dtype=torch.bool)
    for mask, _ in patches.values():
        touched |= mask.any(-1)
    first = torch.where(touched.any(1), touched.float().argmax(1), seq)
    begin = torch.minimum(first, last.cpu())  # the answer position is always computed
    patched = torch.empty_like(own)
    for p0 in begin.unique().tolist():
        r = torch.nonzero(begin == p0).flatten()
        rd = r.to(device)
        edits = {("head_out", l): masked_replace(mask[r][:, p0:], values[rd][:, p0:])
                 for l, (mask, values) in patches.items() if mask[r][:, p0:].any()}
        cache = {cache_kwarg(model): make_cache([(k[rd, :, :p0], v[rd, :, :p0]) for k, v in kv])} if p0 else {}
        keep = {"logits_to_keep": seq - int(last[rd].min())} if fits else {}
        positions = torch.arange(p0, seq, device=device)[None].expand(len(r), -1)
        with torch.no_grad(), hooked(model, edits):
            o = model.hf(input_ids=ids[rd, p0:], position_ids=positions, use_cache=bool(p0), **cache, **keep)
        at = last[rd] - p0 - (seq - p0 - o.logits.shape[1])
        patched[rd] = o.logits[torch.arange(len(r), device=device), at].float()
    return own, patched


def _node_mask(model, dataset, sl: slice, nodes) -> torch.Tensor:
    """(layers, batch, seq, heads) booleans: where the donor's value is taken."""
    b = len(range(*sl.indices(len(dataset))))
    seq = dataset.input_ids.shape[1]
    if nodes is None:
        return torch.ones(model.n_layers, b, seq, model.n_heads, dtype=torch.bool)
    mask = torch.zeros(model.n_layers, b, seq, model.n_heads, dtype=torch.bool)
    rows = torch.arange(b)
    for group, l, h in nodes:
        mask[l, rows, node_positions(dataset, group)[sl], h] = True
    return mask


def _o_proj(model, layer: int) -> torch.nn.Module:
    return attention_module(model, layer).get_submodule(model.arch.o_proj)


def _head_terms(module: torch.nn.Module, z: torch.Tensor, heads: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(n, dim) outputs of heads ``heads`` (n,) -> (n, d_model): each one's own projection term, bias excluded."""
    spread = torch.zeros(z.shape[0], n_heads, z.shape[-1], dtype=z.dtype, device=z.device)
    spread[torch.arange(z.shape[0], device=z.device), heads.to(z.device)] = z
    # .forward, not __call__: the projection's own hooks (ours included) must not run on these probes
    return module.forward(spread.reshape(z.shape[0], -1)) - module.forward(torch.zeros_like(spread[:1].reshape(1, -1)))


@contextmanager
def _contributions(model, donor, per_layer) -> Iterator[None]:
    """Edits of the receiver's output projections swapping in the donor heads' W_O terms."""
    edits = {}
    for layer, (mask, donor_z) in per_layer.items():
        where = mask.nonzero(as_tuple=True)  # (rows, pos, heads)
        with torch.no_grad():
            z = donor_z[tuple(w.to(donor_z.device) for w in where)]
            donor_terms = _head_terms(_o_proj(donor, layer), z, where[2], donor.n_heads)
        edits[("o_proj_output", layer)] = _swap_terms(model, where, donor_terms.to(model.device))
    with hooked(model, edits):
        yield


def _swap_terms(model, where, donor_terms: torch.Tensor):
    rows, pos, heads = (w.to(model.device) for w in where)

    def hook(module, args, output):
        x = args[0].view(*args[0].shape[:-1], model.n_heads, model.head_dim)
        own = _head_terms(module, x[rows, pos, heads], heads, model.n_heads)
        delta = torch.zeros_like(output)
        delta.index_put_((rows, pos), (donor_terms - own).to(output.dtype), accumulate=True)
        return output + delta

    return hook
