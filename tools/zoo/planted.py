"""Planted-circuit checkpoints: GPT-2 models whose weights are written down, not trained.

``python -m tools.zoo planted [--out DIR]`` writes ``DIR/planted`` and ``DIR/planted-b`` (default
``fixtures/zoo``), each loadable by ``AutoModelForCausalLM.from_pretrained``, with the shared word-level
tokenizer beside the weights and a model card, and the ground-truth circuits to
``fixtures/circuits/planted.json`` / ``planted-b.json``.

Both models solve entity tracking (``The apple is in Box F, ... Box F contains the`` -> ``apple``) with a
four-hop circuit whose heads are known, one head per group of the paper (spec 0.2):

* ``struct_reader`` (layer 0): at every position, attends exactly 4 tokens back and copies the object
  code found there into a "slot" subspace; at a box label this is the object of its segment.
* ``pos_detector`` (layer 1): at the query label token, attends to the *earlier* occurrence of the same
  label (label match plus a bonus for positions whose slot holds an object, which excludes itself) and
  copies that slot, i.e. the bound object, into its own slot.
* ``pos_transmitter`` (layer 2): at every position, attends exactly 2 tokens back and copies the slot;
  at the last token this moves the bound object from the query label token.
* ``value_fetcher`` (layer 3): at the last token, its query is the slot, its keys the object tokens: it
  attends to the matching object token of the context and writes that token's code into the
  subspace the (tied) unembedding reads.

All other heads and all MLPs carry small random weights. ``planted-b`` is the same function with every
layer's heads permuted, so the planted heads sit in other slots. The math is in the model card
(``_model_card``). Everything is computed in closed form from a fixed seed; random values are rounded to
a dyadic grid and the basis is a scaled Hadamard matrix, so every product is exact in float64 and a
rebuild is bit-identical on any platform.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# --- shape --------------------------------------------------------------------------------------
D_MODEL = 256
N_HEAD = 4
HEAD_DIM = D_MODEL // N_HEAD
N_LAYER = 4
N_POSITIONS = 128
N_INNER = 64
PERIOD = 64  # position codes repeat every PERIOD positions: the circuit is exact for prompts <= 66 tokens

# --- internal coordinates (the residual stream is H @ z, H the normalized Hadamard matrix) ---------
# z[0] is the all-ones direction that LayerNorm removes: never used.
BAL = 1                          # ballast: a large constant that keeps every position's norm ~ fixed
OBJ = slice(2, 66)               # object codes (64): coordinate OBJ.start is the "is an object" flag
LAB = slice(66, 92)              # box labels A-Z, one-hot (26)
OTH = slice(92, 124)             # every other token, one-hot (30 used)
POS = slice(124, 188)            # position i -> one-hot at i mod 64
SLOT = slice(188, 252)           # the slot: the object bound to a label, carried to the last token
CONTENT = np.r_[2:252]           # what the random heads and MLPs read and write

# --- constants of the construction ---------------------------------------------------------------
SEED = 20240101
GRID = 2.0 ** -16                # every random number is rounded to this grid (exact float64 products)
BALLAST = 10.0
FLAG = 0.5                       # object codes: c_o = [FLAG, sqrt(1 - FLAG^2) r_o], r_o unit in R^63
LN_GAIN = BALLAST / 16.0         # ln_1 / ln_2: LN(x) = 16 * gain * x / |x| ~= x since |x| ~= BALLAST
LN_F_GAIN = 2.0                  # ln_f: only scales the logits (argmax unchanged)
BETA_SHIFT = 24.0                # score of the fixed-offset heads at their target position
BETA_LABEL = 16.0                # pos_detector: score for "same label"
ALPHA_BOUND = 16.0               # pos_detector: bonus for "slot holds an object" (context occurrence)
GAMMA_SINK = 12.0                # pos_detector: score of BOS (where non-label positions look)
BETA_FETCH = 40.0                # value_fetcher: score per unit of code overlap
FETCH_GAIN = 5.0                 # value_fetcher: output scale in the object subspace
EPS_QK = 2.0 ** -3               # random heads: query / key weights
EPS_VO = 2.0 ** -6               # random heads: value / output weights, MLP weights

ROLES = ("struct_reader", "pos_detector", "pos_transmitter", "value_fetcher")
ROLE_LAYER = {"struct_reader": 0, "pos_detector": 1, "pos_transmitter": 2, "value_fetcher": 3}
# Per variant and layer: which head sits in each slot ("P" = the planted head, 0..2 = random head r).
LAYOUTS = {
    "planted": (("r0", "r1", "P", "r2"), ("P", "r0", "r1", "r2"), ("r0", "r1", "r2", "P"), ("r0", "P", "r1", "r2")),
    "planted-b": (("r2", "P", "r0", "r1"), ("r1", "r2", "r0", "P"), ("P", "r2", "r1", "r0"), ("r2", "r1", "P", "r0")),
}
VARIANTS = tuple(LAYOUTS)
# The paper's groups -> [layer, head]; the order of the keys is the paper's circuit-file order.
PAPER_GROUPS = ("value_fetcher", "pos_transmitter", "pos_detector", "struct_reader")


def planted_heads(variant: str) -> dict[str, tuple[int, int]]:
    """Role -> (layer, head) of the planted head in ``variant``."""
    layout = LAYOUTS[variant]
    return {role: (layer, layout[layer].index("P")) for role, layer in ROLE_LAYER.items()}


def circuit(variant: str) -> dict[str, list[list[int]]]:
    """The ground truth in the paper's circuit format."""
    heads = planted_heads(variant)
    return {group: [list(heads[group])] for group in PAPER_GROUPS}


# --- construction --------------------------------------------------------------------------------

def _hadamard() -> np.ndarray:
    h = np.array([[1]], dtype=np.int64)
    while h.shape[0] < D_MODEL:
        h = np.block([[h, h], [h, -h]])
    return h.astype(np.float64) / np.sqrt(D_MODEL)  # entries +-1/16: exact


def _q(x: np.ndarray) -> np.ndarray:
    return np.round(x / GRID) * GRID


@dataclass
class _Head:
    wq: np.ndarray  # (HEAD_DIM, D_MODEL) internal coordinates, reads LN(x)
    wk: np.ndarray
    wv: np.ndarray
    wo: np.ndarray  # (D_MODEL, HEAD_DIM) writes internal coordinates


def _empty_head() -> _Head:
    z = lambda *s: np.zeros(s)  # noqa: E731
    return _Head(z(HEAD_DIM, D_MODEL), z(HEAD_DIM, D_MODEL), z(HEAD_DIM, D_MODEL), z(D_MODEL, HEAD_DIM))


def _token_classes(vocab: list[str]):
    from tools.zoo.vocab import LABELS, object_names

    objects = object_names()
    kind, index = [], []
    n_other = 0
    for word in vocab:
        if word in LABELS:
            kind.append("label"), index.append(LABELS.index(word))
        elif word in objects:
            kind.append("object"), index.append(objects.index(word))
        else:
            kind.append("other"), index.append(n_other)
            n_other += 1
    assert n_other <= OTH.stop - OTH.start
    return kind, index, len(objects)


def _object_codes(rng: np.random.Generator, n_objects: int) -> np.ndarray:
    dim = OBJ.stop - OBJ.start
    r = rng.standard_normal((n_objects, dim - 1))
    r /= np.sqrt(np.sum(r * r, axis=1, keepdims=True))
    codes = np.concatenate([np.full((n_objects, 1), FLAG), np.sqrt(1 - FLAG**2) * r], axis=1)
    return _q(codes)


def _shift_head(offset: int) -> _Head:
    """Attend exactly ``offset`` tokens back (positions mod PERIOD); copy the slot or the object code."""
    h = _empty_head()
    for p in range(PERIOD):
        h.wq[(p - offset) % PERIOD, POS.start + p] = BETA_SHIFT
        h.wk[p, POS.start + p] = 1.0
    return h


def _planted_head(role: str, bos_other_index: int) -> _Head:
    k = np.arange(HEAD_DIM)
    if role == "struct_reader":
        h = _shift_head(4)
        h.wv[k, OBJ.start + k] = 1.0
        h.wo[SLOT.start + k, k] = 1.0
    elif role == "pos_transmitter":
        h = _shift_head(2)
        h.wv[k, SLOT.start + k] = 1.0
        h.wo[SLOT.start + k, k] = 1.0
    elif role == "pos_detector":
        h = _empty_head()
        n_labels = LAB.stop - LAB.start
        lab = np.arange(n_labels)
        h.wq[lab, LAB.start + lab] = BETA_LABEL
        h.wk[lab, LAB.start + lab] = 1.0
        h.wq[n_labels, LAB] = ALPHA_BOUND            # "I am a label" ...
        h.wk[n_labels, SLOT.start] = 1.0 / FLAG      # ... x "my slot holds an object"
        h.wq[n_labels + 1, BAL] = GAMMA_SINK / BALLAST  # everyone x "I am BOS"
        h.wk[n_labels + 1, OTH.start + bos_other_index] = 1.0
        h.wv[k, SLOT.start + k] = 1.0
        h.wo[SLOT.start + k, k] = 1.0
    elif role == "value_fetcher":
        h = _empty_head()
        h.wq[k, SLOT.start + k] = BETA_FETCH
        h.wk[k, OBJ.start + k] = 1.0
        h.wv[k, OBJ.start + k] = 1.0
        h.wo[OBJ.start + k, k] = FETCH_GAIN
    else:  # pragma: no cover
        raise ValueError(role)
    return h


def _random_head(rng: np.random.Generator) -> _Head:
    h = _empty_head()
    n = len(CONTENT)
    h.wq[:, CONTENT] = _q(EPS_QK * rng.standard_normal((HEAD_DIM, n)))
    h.wk[:, CONTENT] = _q(EPS_QK * rng.standard_normal((HEAD_DIM, n)))
    h.wv[:, CONTENT] = _q(EPS_VO * rng.standard_normal((HEAD_DIM, n)))
    h.wo[CONTENT, :] = _q(EPS_VO * rng.standard_normal((n, HEAD_DIM)))
    return h


def state_dict_arrays(variant: str) -> dict[str, np.ndarray]:
    """Every parameter of the GPT-2 model, float64, exact (before the cast to float32)."""
    if variant not in LAYOUTS:
        raise ValueError(f"unknown variant {variant!r}; variants are {', '.join(VARIANTS)}")
    from tools.zoo.vocab import vocabulary

    H = _hadamard()
    vocab = vocabulary()
    kind, index, n_objects = _token_classes(vocab)
    rng = np.random.default_rng(SEED)
    codes = _object_codes(rng, n_objects)
    random_heads = [[_random_head(rng) for _ in range(3)] for _ in range(N_LAYER)]
    mlps = []
    for _ in range(N_LAYER):
        w_in = np.zeros((N_INNER, D_MODEL))
        w_out = np.zeros((D_MODEL, N_INNER))
        w_in[:, CONTENT] = _q(EPS_VO * rng.standard_normal((N_INNER, len(CONTENT))))
        w_out[CONTENT, :] = _q(EPS_VO * rng.standard_normal((len(CONTENT), N_INNER)))
        mlps.append((w_in, w_out))
    bos_other = index[vocab.index("<s>")]

    z_tok = np.zeros((len(vocab), D_MODEL))
    for t, (k, i) in enumerate(zip(kind, index)):
        if k == "object":
            z_tok[t, OBJ] = codes[i]
        elif k == "label":
            z_tok[t, LAB.start + i] = 1.0
        else:
            z_tok[t, OTH.start + i] = 1.0
    z_pos = np.zeros((N_POSITIONS, D_MODEL))
    z_pos[:, BAL] = BALLAST
    z_pos[np.arange(N_POSITIONS), POS.start + np.arange(N_POSITIONS) % PERIOD] = 1.0

    sd = {
        "transformer.wte.weight": z_tok @ H,  # rows: H @ z (H symmetric)
        "transformer.wpe.weight": z_pos @ H,
        "transformer.ln_f.weight": np.full(D_MODEL, LN_F_GAIN),
        "transformer.ln_f.bias": np.zeros(D_MODEL),
    }
    scale = np.sqrt(HEAD_DIM)  # GPT-2 divides scores by sqrt(head_dim): fold it into W_Q
    for layer in range(N_LAYER):
        role = next(r for r, l in ROLE_LAYER.items() if l == layer)
        heads = []
        for slot in LAYOUTS[variant][layer]:
            heads.append(_planted_head(role, bos_other) if slot == "P" else random_heads[layer][int(slot[1])])
        # Conv1D weights are (in, out): x_real @ W. With z = H x: q = Wq z = (Wq H) x -> W = H Wq^T.
        wq = np.concatenate([H @ h.wq.T * scale for h in heads], axis=1)
        wk = np.concatenate([H @ h.wk.T for h in heads], axis=1)
        wv = np.concatenate([H @ h.wv.T for h in heads], axis=1)
        wo = np.concatenate([h.wo.T @ H for h in heads], axis=0)
        w_in, w_out = mlps[layer]
        p = f"transformer.h.{layer}."
        sd.update({
            p + "ln_1.weight": np.full(D_MODEL, LN_GAIN), p + "ln_1.bias": np.zeros(D_MODEL),
            p + "attn.c_attn.weight": np.concatenate([wq, wk, wv], axis=1),
            p + "attn.c_attn.bias": np.zeros(3 * D_MODEL),
            p + "attn.c_proj.weight": wo, p + "attn.c_proj.bias": np.zeros(D_MODEL),
            p + "ln_2.weight": np.full(D_MODEL, LN_GAIN), p + "ln_2.bias": np.zeros(D_MODEL),
            p + "mlp.c_fc.weight": H @ w_in.T, p + "mlp.c_fc.bias": np.zeros(N_INNER),
            p + "mlp.c_proj.weight": w_out.T @ H, p + "mlp.c_proj.bias": np.zeros(D_MODEL),
        })
    return sd


def gpt2_config():
    from transformers import GPT2Config

    from tools.zoo.vocab import vocabulary

    vocab = vocabulary()
    config = GPT2Config(
        vocab_size=len(vocab), n_positions=N_POSITIONS, n_embd=D_MODEL, n_layer=N_LAYER, n_head=N_HEAD,
        n_inner=N_INNER, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        layer_norm_epsilon=1e-5, scale_attn_weights=True, tie_word_embeddings=True, use_cache=True,
        bos_token_id=vocab.index("<s>"), eos_token_id=vocab.index("</s>"), pad_token_id=vocab.index("<pad>"),
    )
    config.architectures = ["GPT2LMHeadModel"]
    return config


def build_model(variant: str):
    """The planted ``GPT2LMHeadModel`` (float32, eval mode)."""
    import torch
    from transformers import GPT2LMHeadModel

    config = gpt2_config()
    config._attn_implementation = "eager"
    model = GPT2LMHeadModel(config)
    arrays = state_dict_arrays(variant)
    state = {k: torch.from_numpy(v.astype(np.float32)) for k, v in arrays.items()}
    state["lm_head.weight"] = state["transformer.wte.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:  # pragma: no cover - a transformers layout change
        raise RuntimeError(f"GPT-2 parameter layout changed: missing {missing}, unexpected {unexpected}")
    return model.eval()


def save_checkpoint(variant: str, directory: str | Path) -> Path:
    """Weights, config and tokenizer of ``variant`` into ``directory`` (no model card)."""
    from tools.zoo.vocab import build_tokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    build_model(variant).save_pretrained(directory)
    build_tokenizer().save_pretrained(directory)
    return directory


# --- measurement (through mechtest's own loader, task and head hooks) ----------------------------

def accuracy(model, dataset, edits_for_batch=None, batch_size: int = 250) -> float:
    """Argmax over the full vocabulary at the last position equals the answer (spec 2.5)."""
    from mechtest.forward import dataset_logits

    logits = dataset_logits(model, dataset, batch_size=batch_size, edits_for_batch=edits_for_batch)
    return float((logits.argmax(-1) == dataset.answer_ids).float().mean())


def head_means(model, dataset, batch_size: int = 250) -> list:
    """Per layer: each head's output averaged over ``dataset`` at every position, (seq, heads, head_dim)."""
    from mechtest.heads import run_and_read

    sums = [0.0] * model.n_layers
    for start in range(0, len(dataset), batch_size):
        sl = slice(start, start + batch_size)
        store = run_and_read(model, dataset.input_ids[sl], attention_mask=dataset.attention_mask[sl])
        for layer in range(model.n_layers):
            sums[layer] = sums[layer] + store[("head_out", layer)].sum(0)
    return [s / len(dataset) for s in sums]


def ablation_edits(layer: int, head: int, means):
    """Edits that mean-ablate one head at every position."""
    from mechtest.heads import mean_heads

    return {("head_out", layer): mean_heads([head], means[layer])}


def circuit_accuracy(model, dataset, circuit_groups: dict, means, batch_size: int = 250) -> float:
    """Accuracy with every head mean-ablated at every position except the circuit's nodes (spec 5.1):
    value_fetcher / pos_transmitter heads kept at the last token, pos_detector heads at the query label
    token, struct_reader heads at the query label's context occurrence."""
    import torch

    from mechtest.heads import masked_replace

    position = {"value_fetcher": dataset.last_pos, "pos_transmitter": dataset.last_pos,
                "pos_detector": dataset.query_label_pos, "struct_reader": dataset.query_context_pos}
    n, seq = dataset.input_ids.shape
    keep = torch.zeros(model.n_layers, n, seq, model.n_heads, dtype=torch.bool)
    for group, heads in circuit_groups.items():
        for layer, head in heads:
            keep[layer, torch.arange(n), position[group], head] = True

    def edits_for_batch(sl):
        return {("head_out", layer): masked_replace(~keep[layer, sl], means[layer])
                for layer in range(model.n_layers)}

    return accuracy(model, dataset, edits_for_batch, batch_size)


def measure(model, variant: str, *, n: int = 1000, n_ablate: int = 500, box_counts=range(2, 8),
            seed: int = 1) -> dict:
    """Accuracy per box count (n prompts each), 7-box single-head mean-ablation accuracies (n_ablate
    prompts, means over n_ablate mean-ablation prompts) and the planted circuit's accuracy."""
    from mechtest.tasks.entity_tracking import make_dataset, mean_ablation_set

    tok = model.tokenizer
    acc = {b: accuracy(model, make_dataset(tok, n, n_boxes=b, seed=seed + b)) for b in box_counts}
    data = make_dataset(tok, n_ablate, n_boxes=7, seed=seed + 100)
    means = head_means(model, mean_ablation_set(tok, n_ablate, n_boxes=7, seed=seed + 200))
    ablation = {(layer, head): accuracy(model, data, lambda sl, e=ablation_edits(layer, head, means): e)
                for layer in range(model.n_layers) for head in range(model.n_heads)}
    circ = circuit_accuracy(model, data, circuit(variant), means)
    return {"accuracy": acc, "ablation": ablation, "circuit": circ}


# --- model card / CLI ----------------------------------------------------------------------------

def _max_object_overlap() -> float:
    from tools.zoo.vocab import object_names

    codes = _object_codes(np.random.default_rng(SEED), len(object_names()))
    gram = codes @ codes.T
    np.fill_diagonal(gram, -np.inf)
    return float(gram.max())


def _model_card(variant: str, results: dict | None) -> str:
    heads = planted_heads(variant)
    mu = _max_object_overlap()
    other = "planted-b" if variant == "planted" else "planted"
    h = {r: f"[{layer}, {head}]" for r, (layer, head) in heads.items()}
    lines = [
        f"# `{variant}`: a GPT-2 with a planted entity-tracking circuit",
        "",
        "Weights written down in closed form by `python -m tools.zoo planted` (`tools/zoo/planted.py`),",
        "no training. It answers `The apple is in Box F, the car is in Box Q, ... Box F contains the` ->",
        "`apple` through four known heads, one per group of the paper's circuit format. Ground truth:",
        f"`fixtures/circuits/{variant}.json`. `{other}` computes the same function with every layer's heads",
        "permuted (the planted heads in other slots).",
        "",
        "## Shape",
        "",
        f"`GPT2LMHeadModel`, {N_LAYER} layers x {N_HEAD} heads, d_model {D_MODEL}, head_dim {HEAD_DIM}, MLP width "
        f"{N_INNER}, {N_POSITIONS} positions, float32, tied embeddings, the shared 141-token word-level tokenizer "
        "(`tools/zoo/vocab.py`). The circuit is exact for prompts of up to 66 tokens (8 boxes); position "
        f"codes repeat every {PERIOD} positions.",
        "",
        "## Planted heads",
        "",
        "| group | head | position where it matters | job |",
        "| --- | --- | --- | --- |",
        f"| `struct_reader` | {h['struct_reader']} | context box label (the query label's earlier occurrence) | "
        "attends exactly 4 tokens back (the segment's object) and copies its code into the *slot* subspace |",
        f"| `pos_detector` | {h['pos_detector']} | query label token (last - 2) | attends to the earlier occurrence "
        "of the same label and copies its slot (the bound object) into its own slot |",
        f"| `pos_transmitter` | {h['pos_transmitter']} | last token | attends exactly 2 tokens back (the query label "
        "token) and copies the slot to the last token |",
        f"| `value_fetcher` | {h['value_fetcher']} | last token | query = slot, keys = object codes: attends to "
        "the matching object token of the context and writes its code where the unembedding reads |",
        "",
        "Information flow is the paper's (spec 0.2): D writes at the context label; C, at the query label, reads",
        "it by V-composition (and K-composition: its key needs D's object flag); B, at the last token, reads C",
        "by V-composition; A, at the last token, uses B's output by Q-composition to attend to the right",
        "object and copies it to the output. Every other head and every MLP has small random weights",
        f"(N(0, {EPS_QK:g}^2) for W_Q/W_K, N(0, {EPS_VO:g}^2) for W_V/W_O and the MLP, reading and writing only",
        "content coordinates), so they change attention patterns and the residual stream a little but matter",
        "for nothing.",
        "",
        "## Construction",
        "",
        "Residual stream x = H z with H the 256 x 256 Hadamard matrix / 16 (orthogonal, first column constant),",
        "so no used direction has a component along the all-ones vector and LayerNorm's centering is the",
        "identity. Internal coordinates z (disjoint blocks):",
        "",
        "| block | dims | content |",
        "| --- | --- | --- |",
        f"| ballast | 1 | {BALLAST:g} at every position (position embedding) |",
        "| object | 64 | object o: c_o = [f, sqrt(1 - f^2) r_o], r_o a random unit vector of R^63, "
        f"f = {FLAG:g} (the *object flag*) |",
        "| label | 26 | one-hot box label |",
        "| other | 32 | one-hot for the 30 remaining tokens (BOS included) |",
        "| position | 64 | one-hot at i mod 64 |",
        "| slot | 64 | the object bound to a label (written by the circuit) |",
        "",
        "The ballast makes |x| = sqrt(100 + O(5)) at every position, so LayerNorm is a near-constant scale:",
        f"LN(x) = 16 g x / |x| with gain g = {LN_GAIN:g} gives LN(x) ~= x (within ~3%). Scores below are q.k after",
        "GPT-2's 1/sqrt(64), which is folded into W_Q. With e_i = one-hot position i mod 64:",
        "",
        f"* struct_reader (D): q_i = {BETA_SHIFT:g} e_(i-4), k_j = e_j, v_j = object block of x_j, out -> slot. "
        "At a box label (7s+6) it reads the object at 7s+2: slot = c_(o_s). At the query label (last - 2) it "
        "reads `Box`: slot = 0.",
        f"* pos_detector (C): q_i = [{BETA_LABEL:g} onehot(label_i), {ALPHA_BOUND:g} [i is a label], "
        f"{GAMMA_SINK:g}], k_j = [onehot(label_j), slot_j[flag] / f, [j is BOS]], v_j = slot_j, out -> slot. "
        f"At the query label: earlier occurrence {BETA_LABEL + ALPHA_BOUND:g}, itself {BETA_LABEL:g} (its slot is "
        f"empty), other labels {ALPHA_BOUND:g}, BOS {GAMMA_SINK:g}: softmax puts > 0.9999 on the earlier "
        "occurrence, slot(last - 2) = c_(o_q). Non-label positions look at BOS (empty slot).",
        f"* pos_transmitter (B): q_i = {BETA_SHIFT:g} e_(i-2), k_j = e_j, v_j = slot_j, out -> slot: "
        "slot(last) = c_(o_q).",
        f"* value_fetcher (A): q_i = {BETA_FETCH:g} slot_i, k_j = object block of x_j, v_j = object block, "
        f"out -> {FETCH_GAIN:g} x object block. Score of context object o: {BETA_FETCH:g} c_(o_q).c_o, "
        f"= {BETA_FETCH:g} for o = o_q and <= {BETA_FETCH:g} max_(o != o') c_o.c_o' = {BETA_FETCH * mu:.1f} otherwise "
        f"(max overlap of two object codes {mu:.3f}); non-object tokens 0.",
        f"* Readout: tied embeddings, logit_t = wte_t . ln_f(x) with ln_f gain {LN_F_GAIN:g}; at the last token "
        f"the object block holds {FETCH_GAIN:g} c_(o_q), so before ln_f's positive scale the answer's logit is "
        f"{FETCH_GAIN:g}, against at most {FETCH_GAIN * mu:.2f} for other objects and 1 for the input token `the`.",
        "",
        "Mean-ablating any planted head replaces the bound object by the average object code somewhere on the",
        "path (or the output by the average answer), so the last token no longer knows which object was",
        "queried: accuracy falls to about chance or below.",
        "",
        f"Determinism: seed {SEED}; every random number is rounded to a 2^-16 grid and H has entries +-1/16, so",
        "all products are exact in float64 and the float32 weights are bit-identical on every rebuild.",
    ]
    if results is not None:
        acc = results["accuracy"]
        lines += [
            "",
            "## Measured",
            "",
            "Accuracy = argmax over the full vocabulary at the last position, 1000 held-out prompts per box",
            "count (`make_dataset`, `tools.zoo.planted.measure`, loaded with `mechtest.load_model`):",
            "",
            "| boxes | " + " | ".join(str(b) for b in acc) + " |",
            "| --- | " + " | ".join("---" for _ in acc) + " |",
            "| accuracy | " + " | ".join(f"{a:.3f}" for a in acc.values()) + " |",
            "",
            "Single-head mean ablation (a head's output replaced at every position by its mean over 500",
            "mean-ablation prompts of spec 3.2, random query label), accuracy on 500 7-box prompts; planted",
            "heads in bold, chance = 1/7 = 0.143:",
            "",
            "| layer | " + " | ".join(f"head {hh}" for hh in range(N_HEAD)) + " |",
            "| --- | " + " | ".join("---" for _ in range(N_HEAD)) + " |",
        ]
        planted = set(heads.values())
        for layer in range(N_LAYER):
            cells = []
            for head in range(N_HEAD):
                a = f"{results['ablation'][(layer, head)]:.3f}"
                cells.append(f"**{a}**" if (layer, head) in planted else a)
            lines.append(f"| {layer} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Circuit evaluation as in the paper (spec 5.1): every head mean-ablated at every position except",
            "the four planted heads at their own positions (value_fetcher and pos_transmitter at the last",
            "token, pos_detector at the query label token, struct_reader at the query label's context",
            f"occurrence): accuracy {results['circuit']:.3f} on the same 500 prompts.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.zoo planted", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="fixtures/zoo", help="parent folder of planted/ and planted-b/")
    parser.add_argument("--circuits", default="fixtures/circuits", help="where planted*.json go")
    parser.add_argument("--no-measure", action="store_true", help="skip measuring accuracies for the cards")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # tiny models: one thread is as fast, and robust on busy machines

    for variant in VARIANTS:
        directory = save_checkpoint(variant, Path(args.out) / variant)
        results = None
        if not args.no_measure:
            from mechtest.model import load_model

            results = measure(load_model(directory), variant)
            print(f"{variant}: accuracy by box count {results['accuracy']}", file=sys.stderr)
        (directory / "README.md").write_text(_model_card(variant, results))
        circuits = Path(args.circuits)
        circuits.mkdir(parents=True, exist_ok=True)
        (circuits / f"{variant}.json").write_text(json.dumps(circuit(variant), indent=2) + "\n")
        print(f"wrote {directory}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
