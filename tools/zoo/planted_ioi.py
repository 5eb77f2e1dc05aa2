"""Planted IOI checkpoints: tiny Llamas whose weights are written down, not trained.

``python -m tools.zoo planted-ioi [--out DIR]`` writes ``DIR/ioi-planted``, ``DIR/ioi-planted-b`` and
``DIR/ioi-planted-noisy`` (default ``fixtures/zoo``), each loadable by ``AutoModelForCausalLM``, with a
word-level tokenizer, a model card, and the ground-truth circuits ``fixtures/circuits/ioi-planted*.json``.

The models solve indirect-object identification (``When Mary and John went to the store, John gave a drink
to`` -> ``Mary``) with the mechanism of Wang et al. (2023), one planted head per group:

* ``duplicate_token`` (layer 0): at a name, attends to every occurrence of the same name and to BOS with one
  score, and copies the name's code: its output is 1/2 of the code at a first occurrence and 2/3 at a repeat
  (S2). The S-inhibition head's value reads ``6 x output - 3 x token``: 0 at a first occurrence, the code of
  S at S2 (V-composition at S2).
* ``s_inhibition`` (layer 1): at END, attends to the three names equally and writes 3 x the mean of those
  values: the code of S, into an inhibition subspace.
* ``name_mover`` (layer 2): at END, its query is "a name" minus the inhibited code (Q-composition), its keys
  the names' codes: it attends to IO and copies IO's code where the LM head reads.

Every other head and the MLPs carry small random weights. Queries and keys use only the rotary pairs whose
frequency is below 2e-4 rad/token (``rope_theta`` 1e30), so attention is position-free to within 1e-5.
``ioi-planted-b`` permutes every layer's heads; ``ioi-planted-noisy`` is the same circuit with every weight
multiplied by ``1 + 0.002 N(0, 1)`` and other random heads (a benign "fine-tune" for the gate).
Deterministic: a fixed seed, random numbers rounded to a 2^-16 grid.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

D_MODEL = 256
N_HEAD = 4
HEAD_DIM = 64
N_LAYER = 3
N_INNER = 64
ROPE_THETA = 1e30
# rotary pairs (j, j + 32) with j >= 4 turn by <= 1e30 ** (-8 / 64) = 1.8e-4 rad per token: usable for q.k
QK_DIMS = [j for j in range(4, 32)] + [j + 32 for j in range(4, 32)]

SEED = 20250224
GRID = 2.0 ** -16
BALLAST = 10.0
BETA_DUP = 24.0     # duplicate-token: score of a same-name token and of BOS
GAMMA_INH = 24.0    # S-inhibition: score of a name
ALPHA_NAME = 24.0   # name mover: score of a name ...
DELTA_INH = 24.0    # ... minus this times its inhibition
READOUT = 20.0      # LM head: logit of a name per unit of its output code
EPS_QK = 2.0 ** -3
EPS_VO = 2.0 ** -6

ROLES = ("duplicate_token", "s_inhibition", "name_mover")
ROLE_LAYER = {"duplicate_token": 0, "s_inhibition": 1, "name_mover": 2}
LAYOUTS = {
    "ioi-planted": (("r0", "P", "r1", "r2"), ("r0", "r1", "r2", "P"), ("P", "r0", "r1", "r2")),
    "ioi-planted-b": (("r2", "r1", "P", "r0"), ("P", "r2", "r0", "r1"), ("r1", "r0", "P", "r2")),
    "ioi-planted-noisy": (("r0", "P", "r1", "r2"), ("r0", "r1", "r2", "P"), ("P", "r0", "r1", "r2")),
}
VARIANTS = tuple(LAYOUTS)
NOISE = {"ioi-planted-noisy": 0.002}
TEMPLATE_WORDS = ["When", "and", "went", "to", "the", ",", "gave", "a"]
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]


def task():
    from mechtest.tasks.registry import get_task

    return get_task("ioi")


def vocabulary() -> list[str]:
    t = task()
    words = SPECIAL_TOKENS + TEMPLATE_WORDS + [w for v in t.vocabularies.values() for w in v]
    return list(dict.fromkeys(words))


def names() -> list[str]:
    return list(task().vocabularies["names"])


# internal coordinates of the residual stream (identity basis)
BAL, NAME_FLAG, BOS_FLAG = 0, 1, 2
TOK = 3                        # one-hot token identity (vocabulary order)


def _blocks(n_vocab: int, n_names: int) -> dict[str, int]:
    dup = TOK + n_vocab
    return {"DUP": dup, "INH": dup + n_names, "OUT": dup + 2 * n_names, "END": dup + 3 * n_names}


def planted_heads(variant: str) -> dict[str, tuple[int, int]]:
    layout = LAYOUTS[variant]
    return {role: (layer, layout[layer].index("P")) for role, layer in ROLE_LAYER.items()}


def circuit(variant: str) -> dict:
    heads = planted_heads(variant)
    return {"task": "ioi", **{g: [list(heads[g])] for g in ("name_mover", "s_inhibition", "duplicate_token")}}


def _q(x: np.ndarray) -> np.ndarray:
    return np.round(x / GRID) * GRID


def _head():
    z = np.zeros
    return {"q": z((HEAD_DIM, D_MODEL)), "k": z((HEAD_DIM, D_MODEL)), "v": z((HEAD_DIM, D_MODEL)),
            "o": z((D_MODEL, HEAD_DIM))}


def _planted(role: str, vocab: list[str], b: dict) -> dict:
    """The planted head's weights on normalized inputs ~= x (RMSNorm gains below make |x| ~ 1 per unit)."""
    h = _head()
    ids = [vocab.index(n) for n in names()]
    scale = np.sqrt(HEAD_DIM)  # Llama divides scores by sqrt(head_dim): fold it into W_Q
    if role == "duplicate_token":
        for n, t in enumerate(ids):
            h["q"][QK_DIMS[n], TOK + t] = BETA_DUP * scale
            h["k"][QK_DIMS[n], TOK + t] = 1.0
            h["v"][n, TOK + t] = 1.0
            h["o"][b["DUP"] + n, n] = 1.0
        sink = QK_DIMS[len(ids)]
        h["q"][sink, NAME_FLAG] = BETA_DUP * scale
        h["k"][sink, BOS_FLAG] = 1.0
    elif role == "s_inhibition":
        h["q"][QK_DIMS[0], BAL] = GAMMA_INH * scale / BALLAST
        h["k"][QK_DIMS[0], NAME_FLAG] = 1.0
        for n, t in enumerate(ids):
            h["v"][n, b["DUP"] + n] = 6.0
            h["v"][n, TOK + t] = -3.0
            h["o"][b["INH"] + n, n] = 3.0
    elif role == "name_mover":
        h["q"][QK_DIMS[0], BAL] = ALPHA_NAME * scale / BALLAST
        h["k"][QK_DIMS[0], NAME_FLAG] = 1.0
        for n, t in enumerate(ids):
            h["q"][QK_DIMS[1 + n], b["INH"] + n] = -DELTA_INH * scale
            h["k"][QK_DIMS[1 + n], TOK + t] = 1.0
            h["v"][n, TOK + t] = 1.0
            h["o"][b["OUT"] + n, n] = 1.0
    return h


def _random_head(rng, content: np.ndarray) -> dict:
    h = _head()
    n = len(content)
    h["q"][:, content] = _q(EPS_QK * rng.standard_normal((HEAD_DIM, n)))
    h["k"][:, content] = _q(EPS_QK * rng.standard_normal((HEAD_DIM, n)))
    h["v"][:, content] = _q(EPS_VO * rng.standard_normal((HEAD_DIM, n)))
    h["o"][content, :] = _q(EPS_VO * rng.standard_normal((n, HEAD_DIM)))
    return h


def state_dict_arrays(variant: str) -> dict[str, np.ndarray]:
    """Every parameter of the Llama, float64 (before the cast to float32)."""
    vocab = vocabulary()
    ids = [vocab.index(n) for n in names()]
    b = _blocks(len(vocab), len(ids))
    assert b["END"] <= D_MODEL
    content = np.arange(TOK, b["END"])
    seed = SEED + (1 if variant in NOISE else 0)
    rng = np.random.default_rng(seed)
    random_heads = [[_random_head(rng, content) for _ in range(3)] for _ in range(N_LAYER)]
    emb = np.zeros((len(vocab), D_MODEL))
    emb[:, BAL] = BALLAST
    emb[np.arange(len(vocab)), TOK + np.arange(len(vocab))] = 1.0
    emb[ids, NAME_FLAG] = 1.0
    emb[vocab.index("<s>"), BOS_FLAG] = 1.0
    lm_head = np.zeros((len(vocab), D_MODEL))
    lm_head[ids, b["OUT"] + np.arange(len(ids))] = READOUT
    # RMSNorm(x) = x / rms(x) * g with rms = |x| / 16: g = |x| / 16 keeps x; a name token at layer 0 exactly
    gain = np.sqrt(BALLAST ** 2 + 2.0) / np.sqrt(D_MODEL)
    sd = {"model.embed_tokens.weight": emb, "lm_head.weight": lm_head,
          "model.norm.weight": np.full(D_MODEL, gain)}
    for layer in range(N_LAYER):
        role = next(r for r, l in ROLE_LAYER.items() if l == layer)
        heads = [_planted(role, vocab, b) if s == "P" else random_heads[layer][int(s[1])]
                 for s in LAYOUTS[variant][layer]]
        p = f"model.layers.{layer}."
        sd[p + "self_attn.q_proj.weight"] = np.concatenate([h["q"] for h in heads], axis=0)
        sd[p + "self_attn.k_proj.weight"] = np.concatenate([h["k"] for h in heads], axis=0)
        sd[p + "self_attn.v_proj.weight"] = np.concatenate([h["v"] for h in heads], axis=0)
        sd[p + "self_attn.o_proj.weight"] = np.concatenate([h["o"] for h in heads], axis=1)
        sd[p + "input_layernorm.weight"] = np.full(D_MODEL, gain)
        sd[p + "post_attention_layernorm.weight"] = np.full(D_MODEL, gain)
        for name, shape in (("gate_proj", (N_INNER, D_MODEL)), ("up_proj", (N_INNER, D_MODEL)),
                            ("down_proj", (D_MODEL, N_INNER))):
            w = np.zeros(shape)
            if name == "down_proj":
                w[content, :] = _q(EPS_VO * rng.standard_normal((len(content), N_INNER)))
            else:
                w[:, content] = _q(EPS_VO * rng.standard_normal((N_INNER, len(content))))
            sd[p + f"mlp.{name}.weight"] = w
    if variant in NOISE:
        for key, w in sd.items():
            if key != "model.embed_tokens.weight" and not key.endswith("norm.weight"):
                sd[key] = _q(w * (1 + NOISE[variant] * rng.standard_normal(w.shape)))
    return sd


def llama_config():
    from transformers import LlamaConfig

    vocab = vocabulary()
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=D_MODEL, intermediate_size=N_INNER, num_hidden_layers=N_LAYER,
        num_attention_heads=N_HEAD, num_key_value_heads=N_HEAD, head_dim=HEAD_DIM, max_position_embeddings=64,
        rms_norm_eps=1e-6, rope_theta=ROPE_THETA, tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
        hidden_act="silu", bos_token_id=vocab.index("<s>"), eos_token_id=vocab.index("</s>"),
        pad_token_id=vocab.index("<pad>"), use_cache=True)
    config.architectures = ["LlamaForCausalLM"]
    return config


def build_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", clean_up_tokenization_spaces=False)


def build_model(variant: str):
    import torch
    from transformers import LlamaForCausalLM

    config = llama_config()
    config._attn_implementation = "eager"
    model = LlamaForCausalLM(config)
    state = {k: torch.from_numpy(v.astype(np.float32)) for k, v in state_dict_arrays(variant).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:  # pragma: no cover - a transformers layout change
        raise RuntimeError(f"Llama parameter layout changed: missing {missing}, unexpected {unexpected}")
    return model.eval()


def save_checkpoint(variant: str, directory: str | Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    build_model(variant).save_pretrained(directory)
    build_tokenizer().save_pretrained(directory)
    return directory


def measure(directory: Path, variant: str, n: int = 500) -> dict:
    """Accuracy and the planted circuit's faithfulness on ``n`` prompts, through mechtest itself."""
    from mechtest.methods.circuits import Circuit
    from mechtest.methods.evaluation import accuracy, faithfulness
    from mechtest.model import load_model

    model = load_model(directory)
    data = task().dataset(model.tokenizer, n, seed=1)
    ref = task().reference(model.tokenizer, n, seed=2)
    circ = Circuit.from_dict(circuit(variant), variant)
    return {"accuracy": accuracy(model, data).value, "faithfulness": faithfulness(model, circ, data, ref).value}


def _model_card(variant: str, results: dict | None) -> str:
    heads = planted_heads(variant)
    lines = [f"# `{variant}`: a Llama with a planted IOI circuit", "",
             "Weights written down by `python -m tools.zoo planted-ioi` (`tools/zoo/planted_ioi.py`; the math is in "
             "its docstring), no training.", "",
             f"`LlamaForCausalLM`, {N_LAYER} layers x {N_HEAD} heads, d_model {D_MODEL}, head_dim {HEAD_DIM}, MLP "
             f"width {N_INNER}, rope_theta {ROPE_THETA:g}, float32, word-level tokenizer of {len(vocabulary())} tokens "
             "(the `ioi` task's words).", "",
             "| group | head | position | job |", "| --- | --- | --- | --- |",
             f"| `duplicate_token` | {list(heads['duplicate_token'])} | S2 | attends to the earlier occurrence of "
             "its own name (and BOS): marks S as repeated |",
             f"| `s_inhibition` | {list(heads['s_inhibition'])} | END | moves the repeated name into an "
             "inhibition subspace (reads the duplicate-token head by V-composition) |",
             f"| `name_mover` | {list(heads['name_mover'])} | END | attends to the name that is not inhibited "
             "(Q-composition) and copies it to the output |"]
    if variant in NOISE:
        lines += ["", f"Every weight multiplied by 1 + {NOISE[variant]} N(0, 1), other random heads and MLPs."]
    if variant == "ioi-planted-b":
        lines += ["", "The same function as `ioi-planted` with every layer's heads permuted."]
    if results:
        lines += ["", f"Measured on 500 prompts (seed 1; mean ablation over 500 ABC prompts, seed 2): accuracy "
                      f"{results['accuracy']:.3f}, planted circuit's faithfulness {results['faithfulness']:.3f}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.zoo planted-ioi", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="fixtures/zoo")
    parser.add_argument("--circuits", default="fixtures/circuits")
    parser.add_argument("--no-measure", action="store_true")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    for variant in VARIANTS:
        directory = save_checkpoint(variant, Path(args.out) / variant)
        results = None if args.no_measure else measure(directory, variant)
        if results:
            print(f"{variant}: {results}", file=sys.stderr)
        (directory / "README.md").write_text(_model_card(variant, results))
        Path(args.circuits).mkdir(parents=True, exist_ok=True)
        (Path(args.circuits) / f"{variant}.json").write_text(json.dumps(circuit(variant), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
