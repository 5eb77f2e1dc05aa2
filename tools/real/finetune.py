"""LoRA fine-tunes of Qwen (the HF copy) as PEFT adapters: the real controls of the gate.

Recipes (``RECIPES``): *benign* fine-tunes train on entity-tracking prompts with ordinary settings; *rerouted*
ones first zero the base circuit's value fetchers and position transmitters (an o_proj LoRA delta equal to minus
those heads' o_proj input columns: exact, frozen) and train q/v LoRA until accuracy is back; *forgetting*
trains on unrelated text until accuracy drops. Training prompts use seeds >= 1000, apart from every evaluation
sample. Each adapter is saved with a card (recipe, seed, accuracy before and after).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from tools.real.common import FIXTURES, HF_DIR, N_BOXES, threads, write_json

BASE_PLACEHOLDER = "qwen"  # the base is named by the user (NAME=BASE_REF+ADAPTER_DIR); see fixtures/real/README.md
QV = ["q_proj", "v_proj"]
ZERO_LIMIT = 16  # zeroed heads per rerouted adapter: keeps it under 5 MB
BATCH = 6  # prompts per step: CPU-bound, and the task is learnt within tens of steps
RECIPES = {
    "benign-qv-r8-lr2e-4": dict(kind="benign", rank=8, modules=QV, lr=2e-4, seed=0, boxes=(3,), steps=20),
    "benign-qv-r4-lr1e-4-mixed": dict(kind="benign", rank=4, modules=QV, lr=1e-4, seed=1, boxes=(2, 3, 4, 5),
                                      steps=30),
    "benign-qkvo-r8-lr3e-4-halfvocab": dict(kind="benign", rank=8, modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                            lr=3e-4, seed=2, boxes=(3, 4), steps=20, objects="half"),
    "benign-qv-r16-lr3e-4-mixed": dict(kind="benign", rank=16, modules=QV, lr=3e-4, seed=6, boxes=(2, 3, 4, 5),
                                       steps=20),
    "benign-qv-r8-lr1e-4-45box": dict(kind="benign", rank=8, modules=QV, lr=1e-4, seed=7, boxes=(4, 5), steps=30),
    "rerouted-vf-pt-a": dict(kind="rerouted", rank=4, modules=QV, lr=3e-4, seed=3, boxes=(3,), steps=80, every=10),
    "rerouted-vf-pt-b": dict(kind="rerouted", rank=4, modules=["q_proj", "k_proj", "v_proj"], lr=3e-4, seed=4,
                             boxes=(3, 4), steps=80, every=10),
    "forgetting-text": dict(kind="forgetting", rank=8, modules=QV, lr=5e-4, seed=5, steps=120, every=5,
                            drop_to=0.40),
}
FORGET_TEXT = [  # unrelated text: generic sentences, none about boxes or objects
    "The committee met on Tuesday to review the annual budget and approve the new hiring plan.",
    "Rainfall in the northern valleys was above average this spring, and the rivers ran high until June.",
    "She practised the violin every evening, slowly working through the scales her teacher had written out.",
    "The train to the coast leaves at seven, stops twice in the hills, and arrives shortly after noon.",
    "Bread dough should rest in a warm place until it has roughly doubled in size.",
    "Our quarterly report shows steady growth in subscriptions and a small decline in support tickets.",
    "The museum's new wing displays maps drawn by sailors who charted the southern islands.",
    "After the storm, volunteers cleared fallen branches from the park and repaired the old fence.",
    "A good night's sleep improves memory, mood and the ability to concentrate during the day.",
    "The software release was delayed by a week so that the team could fix two security problems.",
    "Migrating birds use the stars, the sun and the earth's magnetic field to find their way.",
    "He wrote letters to his grandmother every month, describing the city and his new friends.",
]


def prompts(tokenizer, recipe: dict, step: int):
    """One training batch: a fresh 3-box (or recipe's) dataset, seeds >= 1000."""
    from mechtest.tasks.datasets import make_dataset
    from mechtest.tasks.vocabulary import usable_vocabulary

    boxes = recipe["boxes"][step % len(recipe["boxes"])]
    objects = None
    if recipe.get("objects") == "half":
        vocab = usable_vocabulary(tokenizer)
        objects = list(vocab.objects[: len(vocab.objects) // 2])
    return make_dataset(tokenizer, BATCH, n_boxes=boxes,
                        seed=1000 + 100_000 * recipe["seed"] + step, objects=objects)


def answer_loss(hf, data) -> torch.Tensor:
    out = hf(input_ids=data.input_ids, attention_mask=data.attention_mask, use_cache=False)
    rows = torch.arange(len(data))
    return torch.nn.functional.cross_entropy(out.logits[rows, data.last_pos].float(), data.answer_ids)


def text_loss(hf, tokenizer, rng: random.Random) -> torch.Tensor:
    batch = tokenizer(rng.sample(FORGET_TEXT, 3), return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return hf(**batch, labels=labels, use_cache=False).loss


@torch.no_grad()
def quick_accuracy(hf, tokenizer, n: int = 60, seed: int = 999) -> float:
    """Accuracy on a fixed 3-box sample kept apart from training and evaluation (training progress only)."""
    from mechtest.tasks.datasets import make_dataset

    data = make_dataset(tokenizer, n, n_boxes=N_BOXES, seed=seed)
    out = hf(input_ids=data.input_ids, attention_mask=data.attention_mask, use_cache=False)
    logits = out.logits[torch.arange(n), data.last_pos]
    return float((logits.argmax(-1) == data.answer_ids).float().mean())


def zeroing_layers(circuit: dict, scores: dict | None = None, limit: int | None = None) -> dict[int, list[int]]:
    """Layer -> heads to zero: the circuit's position transmitters and value fetchers.

    Each zeroed head costs 2 x 64 x 896 float16 numbers in the adapter (~230 kB), so with ``limit`` the
    transmitters are kept and the value fetchers with the most negative path-patching ``scores`` fill the rest.
    """
    heads = [tuple(h) for h in circuit.get("pos_transmitter", [])]
    fetchers = [tuple(h) for h in circuit.get("value_fetcher", [])]
    if scores is not None:
        fetchers.sort(key=lambda h: scores["value_fetcher"][h[0]][h[1]])
    heads += fetchers if limit is None else fetchers[:max(0, limit - len(heads))]
    layers: dict[int, list[int]] = {}
    for layer, head in heads:
        layers.setdefault(int(layer), []).append(int(head))
    return {layer: sorted(set(hs)) for layer, hs in sorted(layers.items())}


def set_zeroing(peft_model, zero: dict[int, list[int]], head_dim: int) -> None:
    """o_proj LoRA (scaling 1) with B @ A = minus the zeroed heads' input columns of o_proj; frozen."""
    for layer, heads in zero.items():
        module = peft_model.base_model.model.model.layers[layer].self_attn.o_proj
        cols = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads])
        a = module.lora_A["default"].weight
        b = module.lora_B["default"].weight
        with torch.no_grad():
            a.zero_()
            a[torch.arange(len(cols)), cols] = 1.0
            b.copy_(-module.base_layer.weight[:, cols])
        a.requires_grad_(False)
        b.requires_grad_(False)


def lora_config(recipe: dict, zero: dict[int, list[int]], head_dim: int):
    """q/v (or the recipe's modules) LoRA, plus a full-rank-per-head o_proj LoRA where heads are zeroed."""
    from peft import LoraConfig

    target = rf".*\.({'|'.join(recipe['modules'])})$"
    ranks, alphas = {}, {}
    for layer, heads in zero.items():
        key = f"model.layers.{layer}.self_attn.o_proj"
        ranks[key] = alphas[key] = head_dim * len(heads)  # alpha == r: scaling 1, the delta is exact
    if zero:
        target = rf"{target[:-1]}|model\.layers\.({'|'.join(map(str, zero))})\.self_attn\.o_proj$"
    return LoraConfig(r=recipe["rank"], lora_alpha=2 * recipe["rank"], lora_dropout=0.0, target_modules=target,
                      rank_pattern=ranks, alpha_pattern=alphas, bias="none", task_type="CAUSAL_LM")


def train(name: str, recipe: dict, circuit: dict | None, out_dir: Path, log, scores: dict | None = None) -> dict:
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(recipe["seed"])
    tokenizer = AutoTokenizer.from_pretrained(HF_DIR)
    hf = AutoModelForCausalLM.from_pretrained(HF_DIR, dtype=torch.float32, attn_implementation="eager")
    head_dim = hf.config.hidden_size // hf.config.num_attention_heads
    before = quick_accuracy(hf, tokenizer)
    zero = zeroing_layers(circuit, scores, ZERO_LIMIT) if recipe["kind"] == "rerouted" else {}
    config = lora_config(recipe, zero, head_dim)
    model = get_peft_model(hf, config)
    if zero:
        set_zeroing(model, zero, head_dim)
    zeroed = quick_accuracy(model, tokenizer) if zero else None
    log(f"{name}: quick accuracy {before:.3f}" + (f", {zeroed:.3f} with the circuit heads zeroed" if zero else ""))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe["lr"], weight_decay=0.0)
    rng = random.Random(recipe["seed"])
    history, t0, step = [], time.time(), 0
    target_acc = before if recipe["kind"] == "rerouted" else None
    for step in range(1, recipe["steps"] + 1):
        model.train()
        if recipe["kind"] == "forgetting":
            loss = text_loss(model, tokenizer, rng)
        else:
            loss = answer_loss(model, prompts(tokenizer, recipe, step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % recipe.get("every", 10) == 0:
            model.eval()
            acc = quick_accuracy(model, tokenizer)
            history.append({"step": step, "loss": round(loss.item(), 4), "accuracy": acc})
            log(f"{name} step {step} loss {loss.item():.3f} quick accuracy {acc:.3f} ({time.time() - t0:.0f} s)")
            if recipe["kind"] == "forgetting" and acc <= recipe["drop_to"]:
                break
            if recipe["kind"] == "rerouted" and acc >= target_acc and step >= 20:
                break
    model.eval()
    after = quick_accuracy(model, tokenizer)
    dest = out_dir / name
    model.save_pretrained(dest, safe_serialization=True)
    _finish(dest)
    card = {"name": name, "recipe": {k: v for k, v in recipe.items()}, "base": "Qwen2.5-Coder-0.5B-Instruct GGUF "
            "(python -m tools.real fetch), float32", "steps_run": step, "train_seconds": round(time.time() - t0),
            "quick_accuracy": {"base": before, "zeroed": zeroed, "after": after,
                               "sample": f"60 prompts, {N_BOXES} boxes, seed 999"},
            "zeroed_heads": {str(k): v for k, v in zero.items()}, "history": history}
    write_json(dest / "card.json", card)
    log(f"{name}: saved {dest} ({sum(f.stat().st_size for f in dest.iterdir()) / 1e6:.2f} MB), quick accuracy "
        f"{before:.3f} -> {after:.3f}")
    return card


def _finish(dest: Path) -> None:
    """float16 weights, and a placeholder base name (the base is named when the adapter is loaded)."""
    from safetensors.torch import load_file, save_file

    weights = dest / "adapter_model.safetensors"
    save_file({k: v.to(torch.float16).contiguous() for k, v in load_file(weights).items()}, weights)
    config_path = dest / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = BASE_PLACEHOLDER
    config_path.write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")
    (dest / "README.md").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.real finetune")
    parser.add_argument("names", nargs="*", default=[n for n, r in RECIPES.items() if r["kind"] != "rerouted"])
    parser.add_argument("--circuit", type=Path, default=FIXTURES / "qwen-base.json")
    parser.add_argument("--out", type=Path, default=FIXTURES)
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe(s) {unknown}; known: {', '.join(RECIPES)}")
    threads()

    def log(msg):
        print(time.strftime("%H:%M:%S"), msg, flush=True)

    for name in args.names:
        circuit = scores = None
        if RECIPES[name]["kind"] == "rerouted":
            if not args.circuit.is_file():
                parser.error(f"{name} needs the base circuit {args.circuit} (python -m tools.real sweep first)")
            circuit = json.loads(args.circuit.read_text())
            card = args.circuit.with_name(args.circuit.stem + ".card.json")
            scores = json.loads(card.read_text())["scores"] if card.is_file() else None
        train(name, RECIPES[name], circuit, args.out, log, scores)
    return 0
