"""Measure the zoo with mechtest's own code (``python -m tools.zoo build --measure``).

Per evaluation seed: base's circuit discovered by ``discover_circuit`` (200 prompts, 7 boxes), its faithfulness
in base with random circuits of the same sizes, then ``compare(base, candidate)`` for every candidate: the zoo,
every control, and `base` with 1 % relative weight noise on every tensor (its accuracy, the base circuit's
faithfulness in it, CMAP gain, verdict). Writes ``fallback-measurements.json``, ``FALLBACK.md`` and the model
cards. Then the gate's false-pass rate over
within-layer head renamings of `other` (seed 0): each renamed copy is function-identical to `other`, so its own
discovery is `other`'s with the heads renamed; that circuit is passed in instead of rediscovering (the
path-patching profile, supporting evidence only, is `other`'s unrenamed).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from tools.zoo.fallback import CONTROLS, N_BOXES, ROOT, ZOO

N_PROMPTS = 200
RESULTS = ROOT / "fixtures" / "zoo" / "fallback-measurements.json"
NOISED = "base-noise-1pct"    # base with 1 % relative weight noise (robust.rel_noise, seed 0): built in memory


def candidates() -> dict[str, Path]:
    out = {"finetuned": ZOO / "finetuned", "other": ZOO / "other"}
    for d in sorted(CONTROLS.iterdir()):
        if (d / "config.json").exists():
            out[d.name] = d
    return out


def _noised_base(tmp: str):
    """``base`` with 1 % relative noise on every tensor, loaded through mechtest like any checkpoint."""
    import torch
    from transformers import GPT2LMHeadModel

    import mechtest
    from tools.zoo.robust import rel_noise

    model = GPT2LMHeadModel.from_pretrained(ZOO / "base", torch_dtype=torch.float32)
    rel_noise(model, 0.01, seed=0)
    model.save_pretrained(tmp)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (ZOO / "base" / f).exists():
            (Path(tmp) / f).write_bytes((ZOO / "base" / f).read_bytes())
    return mechtest.load_model(tmp, name=NOISED)


def _m(x):
    return None if x is None else {"value": float(x.value), "ci_low": float(x.ci_low), "ci_high": float(x.ci_high)}


def measure_all(seeds, log, n_renamings: int = 50) -> dict:
    import torch

    import mechtest
    from mechtest.methods.compare import compare
    from mechtest.methods.discovery import discover_circuit
    from mechtest.methods.evaluation import faithfulness, random_circuit_faithfulness
    from mechtest.tasks.entity_tracking import make_dataset, mean_ablation_set

    import tempfile

    torch.set_num_threads(1)
    base = mechtest.load_model(str(ZOO / "base"), name="base")
    cands = {name: mechtest.load_model(str(p), name=name) for name, p in candidates().items()}
    cands[NOISED] = _noised_base(tempfile.mkdtemp(prefix="mechtest-noised-"))
    res: dict = {"n_prompts": N_PROMPTS, "n_boxes": N_BOXES, "seeds": {}}
    for seed in seeds:
        t0 = time.time()
        disc = discover_circuit(base, n_prompts=N_PROMPTS, n_boxes=N_BOXES, seed=seed, progress=False)
        data = make_dataset(base.tokenizer, N_PROMPTS, n_boxes=N_BOXES, seed=seed + 3)
        ref = mean_ablation_set(base.tokenizer, N_PROMPTS, n_boxes=N_BOXES, seed=seed + 4)
        f_base = faithfulness(base, disc.circuit, data, ref, seed=seed)
        f_rand = random_circuit_faithfulness(base, disc.circuit, data, ref, seed=seed)
        row = {"circuit": disc.circuit.to_dict(), "base_faithfulness": _m(f_base),
               "base_random_faithfulness": _m(f_rand), "base_accuracy": f_base.details.get("model_accuracy"), "candidates": {}}
        log(f"seed {seed}: circuit {disc.circuit.to_dict()} faithful {f_base.value:.3f} "
            f"[{f_base.ci_low:.3f}, {f_base.ci_high:.3f}], random {f_rand.value:.3f}")
        for name, cand in cands.items():
            c = compare(base, cand, n_prompts=N_PROMPTS, n_boxes=N_BOXES, seed=seed, base_discovery=disc,
                        progress=False)
            fr = random_circuit_faithfulness(cand, disc.circuit, data, ref, seed=seed) \
                if c.candidate_accuracy.value > 0 else None
            row["candidates"][name] = {
                "verdict": c.verdict, "accuracy": _m(c.candidate_accuracy), "base_accuracy": _m(c.base_accuracy),
                "gain": _m(c.accuracy_difference), "faithfulness": _m(c.faithfulness),
                "random_faithfulness": _m(fr), "cmap_gain": _m(c.cmap_gain),
                "cmap_explained": _m(c.cmap_explained), "own_circuit": c.candidate_circuit.to_dict(),
                "explain": c.explain()}
            log(c.explain())
        row["seconds"] = round(time.time() - t0, 1)
        res["seeds"][str(seed)] = row
        RESULTS.write_text(json.dumps(res, indent=1) + "\n")
    if n_renamings:
        res["renamings"] = renamings(base, n_renamings, log)
        RESULTS.write_text(json.dumps(res, indent=1) + "\n")
    return res


def renamings(base, n: int, log, seed: int = 0) -> dict:
    import sys

    from mechtest.methods.circuits import Circuit
    from mechtest.methods.compare import compare
    from mechtest.methods.discovery import Discovery, discover_circuit

    sys.path.insert(0, str(ROOT))
    from tests.controls import renamed_heads

    disc_b = discover_circuit(base, n_prompts=N_PROMPTS, n_boxes=N_BOXES, seed=seed, progress=False)
    import mechtest

    other = mechtest.load_model(str(ZOO / "other"), name="other")
    disc_o = discover_circuit(other, n_prompts=N_PROMPTS, n_boxes=N_BOXES, seed=seed, progress=False)
    rng = random.Random(12345)
    verdicts, passed = [], []
    for i in range(n):
        perms = {layer: rng.sample(range(4), 4) for layer in range(4)}
        # new head i of layer l is old head perms[l][i]: old head h is now at perms[l].index(h)
        groups = {g: tuple((l, perms[l].index(h)) for l, h in hs) for g, hs in disc_o.circuit.groups.items()}
        d = Discovery(Circuit(groups, "discovered:renamed"), disc_o.scores, disc_o.sizes, disc_o.receivers,
                      disc_o.n_prompts, disc_o.seed)
        cand = renamed_heads(ZOO / "other", perms, name=f"other-renamed-{i}")
        c = compare(base, cand, n_prompts=N_PROMPTS, n_boxes=N_BOXES, seed=seed, base_discovery=disc_b,
                    candidate_discovery=d, progress=False)
        verdicts.append(c.verdict)
        if c.verdict == "preserved":
            passed.append({"perms": perms, "explain": c.explain()})
        log(f"renaming {i}: {perms} -> {c.verdict} (faithfulness "
            f"{c.faithfulness.value if c.faithfulness else 0:.3f})")
    counts = {v: verdicts.count(v) for v in set(verdicts)}
    return {"n": n, "counts": counts, "false_pass_rate": counts.get("preserved", 0) / n, "passed": passed}


def _fmt(m, ci: int = 2):
    return "-" if m is None else f"{m['value']:.3f} [{m['ci_low']:.{ci}f}, {m['ci_high']:.{ci}f}]"


def write_summary(res: dict) -> None:
    """``fixtures/zoo/FALLBACK.md``: every measured row of ``res``."""
    lines = ["# The zoo, measured (`python -m tools.zoo build --measure`)", "",
             "Models: `fixtures/zoo/{base,finetuned,other}` (float32) and `fixtures/controls/*` (float16), each with "
             "its recipe in its model card (`tools/zoo/fallback.py`, `tools/zoo/gate_controls.py`); "
             f"`{NOISED}` is base with 1 % relative noise on every tensor (seed 0). {res['n_prompts']} prompts per seed, "
             f"{res['n_boxes']} boxes; base's circuit discovered at each seed; 95% intervals.", "",
             "| model | seed | accuracy | base-circuit faithfulness | random circuits | CMAP gain (-> base) | CMAP explains "
             "| compare() |", "|---|---|---|---|---|---|---|---|"]
    seeds = res["seeds"]
    for s, row in seeds.items():
        lines.append(f"| base | {s} | {row['base_accuracy']:.3f} | {_fmt(row['base_faithfulness'])} | "
                     f"{_fmt(row['base_random_faithfulness'])} | - | - | - |")
    names = list(next(iter(seeds.values()))["candidates"])
    for name in names:
        for s, row in seeds.items():
            c = row["candidates"][name]
            lines.append(f"| {name} | {s} | {_fmt(c['accuracy'])} | {_fmt(c['faithfulness'])} | "
                         f"{_fmt(c['random_faithfulness'])} | {_fmt(c['cmap_gain'])} | {_fmt(c['cmap_explained'])} | "
                         f"{c['verdict']} |")
    lines += ["", "Discovered circuits: " + "; ".join(f"seed {s} `{json.dumps(r['circuit'])}`" for s, r in seeds.items())]
    if "renamings" in res:
        r = res["renamings"]
        lines += ["", f"Within-layer renamings of `other` (seed 0): {r['n']} -> {r['counts']}; false-pass rate "
                      f"{r['false_pass_rate']:.3f}."]
    (ZOO / "FALLBACK.md").write_text("\n".join(lines) + "\n")


def readme_table(res: dict) -> str:
    """The README's zoo table: per model, the base circuit's faithfulness at each seed (95% CI), random circuits
    and the verdicts, from ``fallback-measurements.json``."""
    seeds = res["seeds"]

    def short(m):
        return f"{m['value']:.2f} [{m['ci_low']:.2f}, {m['ci_high']:.2f}]"

    rows = ["| model | accuracy | base circuit's faithfulness (95% CI), seeds " + "/".join(seeds) +
            " | random circuits | verdict vs base |", "| --- | --- | --- | --- | --- |"]
    rows.append("| base | " + " / ".join(f"{r['base_accuracy']:.2f}" for r in seeds.values()) + " | " +
                " / ".join(short(r["base_faithfulness"]) for r in seeds.values()) + " | " +
                " / ".join(f"{r['base_random_faithfulness']['value']:.3f}" for r in seeds.values()) + " | - |")
    for name in next(iter(seeds.values()))["candidates"]:
        cs = [r["candidates"][name] for r in seeds.values()]
        verdicts = [c["verdict"] for c in cs]
        summary = ", ".join(f"{v} {verdicts.count(v)}/{len(verdicts)}" for v in dict.fromkeys(verdicts))
        rows.append(f"| {name} | " + " / ".join(f"{c['accuracy']['value']:.2f}" for c in cs) + " | " +
                    " / ".join(short(c["faithfulness"]) if c["faithfulness"] else "-" for c in cs) + " | " +
                    " / ".join(f"{c['random_faithfulness']['value']:.3f}" if c["random_faithfulness"] else "-"
                               for c in cs) + f" | {summary} |")
    if "renamings" in res:
        r = res["renamings"]
        rows.append(f"| {r['n']} within-layer renamings of `other` (seed 0) | | | | "
                    + ", ".join(f"{k} {v}/{r['n']}" for k, v in r["counts"].items()) + " |")
    return "\n".join(rows)


def write_cards(res: dict) -> None:
    """Regenerate every model card with the measured table, FALLBACK.md, and fixtures/circuits/zoo-base.json
    (seed 0)."""
    write_summary(res)
    from tools.zoo.fallback import model_card
    from tools.zoo.gate_controls import _card

    seeds = res["seeds"]
    first = seeds[min(seeds, key=int)]
    (ROOT / "fixtures" / "circuits" / "zoo-base.json").write_text(json.dumps(first["circuit"]) + "\n")

    def fmt(m):
        return _fmt(m, ci=3)

    folders = {"base": ZOO / "base", **candidates()}
    for name, folder in folders.items():
        meta = json.loads((folder / "mechtest.json").read_text())
        lines = ["Base's circuit = `discover_circuit(base, n_prompts=200, n_boxes=7, seed=s)`; accuracy, "
                 "faithfulness and CMAP on 200 prompts (seed s + 3; means over seed s + 4), 95% intervals.", "",
                 "| eval seed | accuracy | base-circuit faithfulness | random circuits (same sizes) | CMAP gain "
                 "(this -> base) | compare() vs base |", "| --- | --- | --- | --- | --- | --- |"]
        for s, row in seeds.items():
            if name == "base":
                lines.append(f"| {s} | {row['base_accuracy']:.3f} | {fmt(row['base_faithfulness'])} | "
                             f"{fmt(row['base_random_faithfulness'])} | - | - |")
            else:
                c = row["candidates"][name]
                lines.append(f"| {s} | {fmt(c['accuracy'])} | {fmt(c['faithfulness'])} | "
                             f"{fmt(c['random_faithfulness'])} | {fmt(c['cmap_gain'])} | {c['verdict']} |")
        if name == "base":
            lines += ["", f"Discovered circuit (seed 0): `{json.dumps(first['circuit'])}`"]
        card = model_card(meta) if "stages" in meta else _card(meta)
        text = card + "\n## Measured with mechtest\n\n" + "\n".join(lines) + "\n"
        (folder / "README.md").write_text(text)
