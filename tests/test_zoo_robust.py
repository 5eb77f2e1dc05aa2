"""The robustness probe's tools (tools/zoo/robust.py): the rescalings must not change the function, must
balance the blocks they claim to, and the noise must have the size the probe reports."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from tools.zoo import robust  # noqa: E402
from tools.zoo.planted import build_model  # noqa: E402
from tools.zoo.train import Ids, make_batch  # noqa: E402
from tools.zoo.vocab import build_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def planted_and_batch():
    gen = torch.Generator().manual_seed(0)
    x, _, _ = make_batch(Ids(build_tokenizer()), gen, 4, 5, 2)
    return build_model("planted"), x


def _logits(model, x):
    with torch.no_grad():
        return model(input_ids=x).logits


def test_balance_and_residual_scale_keep_the_function_and_balance_each_head(planted_and_batch):
    model, x = planted_and_batch
    before = _logits(model, x)
    changed = robust._copy(model)
    robust.balance(changed)
    robust.scale_residual(changed, 16.0)
    after = _logits(changed, x)
    assert torch.allclose(after, before, rtol=1e-3, atol=1e-3 * before.abs().max().item())
    for attn, q, k, v in robust._heads(changed):
        w = attn.c_attn.weight
        assert w[:, q].norm().item() == pytest.approx(w[:, k].norm().item(), rel=1e-4)
        assert w[:, v].norm().item() == pytest.approx(w[:, q].norm().item(), rel=1e-4)
    wte = changed.transformer.wte.weight
    assert wte.norm().item() == pytest.approx(16.0 * model.transformer.wte.weight.norm().item(), rel=1e-5)
    assert not torch.allclose(changed.transformer.h[0].attn.c_attn.weight, model.transformer.h[0].attn.c_attn.weight)


def test_magnify_keeps_the_function_and_moves_the_layernorm_scale_into_the_matrices(planted_and_batch):
    model, x = planted_and_batch
    before = _logits(model, x)
    changed = robust._copy(model)
    robust.magnify(changed, 16.0)
    torch.testing.assert_close(_logits(changed, x), before, rtol=1e-4, atol=1e-4 * before.abs().max().item())
    for old, new in zip(model.transformer.h, changed.transformer.h):
        assert new.mlp.c_fc.weight.norm().item() == pytest.approx(16 * old.mlp.c_fc.weight.norm().item(), rel=1e-5)
        assert new.ln_1.weight.norm().item() == pytest.approx(old.ln_1.weight.norm().item() / 16, rel=1e-5)


def test_relative_noise_has_the_requested_size_per_tensor(planted_and_batch):
    model, _ = planted_and_batch
    noised = robust._copy(model)
    robust.rel_noise(noised, 0.01, seed=0)
    for (name, p), q in zip(model.named_parameters(), noised.parameters()):
        if p.numel() >= 10_000:
            assert (q - p).std().item() == pytest.approx(0.01 * p.std().item(), rel=0.05), name


def test_soften_into_band_scales_only_the_named_heads_queries_into_the_band(planted_and_batch):
    from tools.zoo.fallback import _Ctx, accuracy
    from tools.zoo.planted import planted_heads

    model, _ = planted_and_batch
    ctx = _Ctx()
    head = planted_heads("planted")["value_fetcher"]
    softened, factor = robust.soften_into_band(model, ctx, [head], band=(0.4, 0.8), log=lambda *a: None)
    assert softened is not None and 0 < factor < 1
    assert 0.4 <= accuracy(softened, ctx.valid) <= 0.8
    for i, ((a0, q, k, v), (a1, *_)) in enumerate(zip(robust._heads(model), robust._heads(softened))):
        w0, w1 = a0.c_attn.weight, a1.c_attn.weight
        same = torch.equal(w0[:, q], w1[:, q])
        assert same != ((i // 4, i % 4) == head)
        assert torch.equal(w0[:, k], w1[:, k]) and torch.equal(w0[:, v], w1[:, v])


def test_distil_trains_a_fresh_student_towards_the_teachers_attention():
    """A short run of the distillation (tools/zoo/distil.py): a student of the zoo's shape, ordinarily
    initialised (not the teacher's weights), whose circuit heads' attention moves towards the teacher's."""
    from types import SimpleNamespace

    from mechtest.tasks.entity_tracking import make_dataset
    from tools.zoo import distil
    from tools.zoo.planted import planted_heads

    teacher = build_model("planted")
    heads = sorted(planted_heads("planted").values())
    tok = build_tokenizer()
    ctx = SimpleNamespace(ids=Ids(tok), valid=make_dataset(tok, 14, n_boxes=7, seed=0))  # a small validation set
    attention_loss = []
    student, curve = distil.distil(teacher, ctx, heads, steps=40, every=10, lr=3e-3,
                                   log=lambda line: attention_loss.append(float(line.split()[5])))
    assert sum(p.numel() for p in student.parameters()) == sum(p.numel() for p in teacher.parameters())
    assert not torch.allclose(student.transformer.h[0].attn.c_attn.weight, teacher.transformer.h[0].attn.c_attn.weight)
    assert [s for s, _ in curve] == [0, 10, 20, 30, 40]
    assert attention_loss[-1] < 0.8 * attention_loss[0]  # step 40 against step 10


def test_the_distillation_circuit_run_keeps_each_head_at_its_groups_positions_only():
    from tools.zoo.distil import _node_keep

    ids = Ids(build_tokenizer())
    x, pos, _ = make_batch(ids, torch.Generator().manual_seed(0), 3, 3, 2)
    roles = {"struct_reader": (0, 2), "pos_detector": (1, 0), "pos_transmitter": (2, 3), "value_fetcher": (3, 1)}
    keep = _node_keep(x, pos, roles, 256)
    for row in range(3):
        kept = {role: torch.nonzero(keep[l][row, :, h * 64]).flatten().tolist() for role, (l, h) in roles.items()}
        assert kept["pos_transmitter"] == kept["value_fetcher"] == pos[row].tolist()  # the answer positions
        assert kept["pos_detector"] == (pos[row] - 2).tolist()                         # the query labels
        labels = [int(x[row, p]) for p in kept["pos_detector"]]
        assert sorted(int(x[row, p]) for p in kept["struct_reader"]) == sorted(labels)  # those labels ...
        assert all(p < int(pos[row].min()) - 3 for p in kept["struct_reader"])        # ... in the context
        for l, h in roles.values():
            assert not keep[l][row][:, [g * 64 for g in range(4) if g != h]].any()      # no other head is kept


def test_distillation_circuit_target_is_the_teachers_own_circuit_run():
    """With the teacher's circuit run as target, a student equal to the teacher has nothing to learn (circuit KL
    ~0), while the full run as target asks its circuit for what the teacher's other heads add (a randomly
    initialised teacher, so that they add something)."""
    import copy
    from types import SimpleNamespace

    from transformers import GPT2LMHeadModel

    from mechtest.tasks.entity_tracking import make_dataset
    from tools.zoo import distil
    from tools.zoo.planted import gpt2_config, planted_heads

    torch.manual_seed(0)
    config = gpt2_config()
    config._attn_implementation = "eager"
    teacher = GPT2LMHeadModel(config).eval()
    roles = planted_heads("planted")
    tok = build_tokenizer()
    ctx = SimpleNamespace(ids=Ids(tok), valid=make_dataset(tok, 14, n_boxes=7, seed=0))
    kl = {}
    for target in ("teacher", "full"):
        lines = []
        distil.distil(teacher, ctx, sorted(roles.values()), steps=1, every=1, lr=0.0, student=copy.deepcopy(teacher),
                      circuit_weight=1.0, roles=roles, circuit_target=target, log=lines.append)
        kl[target] = float(lines[-1].split("circuit-kl ")[1].split()[0])
    assert kl["teacher"] < 1e-4 and kl["full"] > 1e-3, kl  # the log prints 4 decimals


def test_head_spread_measures_only_the_other_heads_prompt_specific_output():
    """``_head_spread`` is what mean ablation removes from the non-circuit heads: 0 when their output projections
    are zero, unchanged by the circuit heads' weights, positive otherwise."""
    from transformers import GPT2LMHeadModel

    from tools.zoo.distil import HEAD_DIM, _head_spread
    from tools.zoo.planted import gpt2_config

    torch.manual_seed(0)
    model = GPT2LMHeadModel(gpt2_config()).eval()
    x, _, _ = make_batch(Ids(build_tokenizer()), torch.Generator().manual_seed(0), 6, 3, 1)
    circuit = {(0, 2), (1, 0), (2, 3), (3, 1)}

    def spread():
        record = {}
        hooks = [b.attn.c_proj.register_forward_pre_hook(lambda m, a, l=l: record.__setitem__(l, a[0]))
                 for l, b in enumerate(model.transformer.h)]
        with torch.no_grad():
            model(input_ids=x)
        for h in hooks:
            h.remove()
        with torch.no_grad():
            return float(_head_spread(model, circuit, record))

    before = spread()
    assert before > 0
    with torch.no_grad():
        model.transformer.h[3].attn.c_proj.weight[HEAD_DIM:2 * HEAD_DIM] *= 5  # L3H1, a circuit head
    assert spread() == pytest.approx(before, rel=1e-5)
    with torch.no_grad():
        for l, block in enumerate(model.transformer.h):
            for h in range(4):
                if (l, h) not in circuit:
                    block.attn.c_proj.weight[h * HEAD_DIM:(h + 1) * HEAD_DIM] = 0
    assert spread() == 0


def test_distil_can_move_the_mechanism_into_other_heads_with_the_originals_frozen_at_zero():
    """A rerouted model learns the teacher's patterns in other heads (``moved``) while the original heads'
    output projections stay zero (``frozen``)."""
    from types import SimpleNamespace

    from mechtest.tasks.entity_tracking import make_dataset
    from tools.zoo import distil
    from tools.zoo.fallback import _head_cols
    from tools.zoo.planted import planted_heads

    teacher = build_model("planted")
    heads = sorted(planted_heads("planted").values())
    moved = {h: (h[0], (h[1] + 1) % 4) for h in heads}
    tok = build_tokenizer()
    ctx = SimpleNamespace(ids=Ids(tok), valid=make_dataset(tok, 14, n_boxes=7, seed=0))
    attention_loss = []
    student, _ = distil.distil(teacher, ctx, heads, steps=40, every=10, lr=3e-3, moved=moved, frozen=heads,
                               log=lambda line: attention_loss.append(float(line.split()[5])))
    for layer, head in heads:
        assert not student.transformer.h[layer].attn.c_proj.weight[_head_cols(head)].any()
    assert attention_loss[-1] < 0.8 * attention_loss[0]


def test_the_parallel_build_plan_builds_every_recipe_once_and_after_its_start():
    from tools.zoo.fallback import PARALLEL_PLAN, recipes

    order = [n for phase in PARALLEL_PLAN for cmd in phase if cmd[0] == "build" for n in cmd[2:]]
    assert sorted(order) == sorted(r.name for r in recipes())
    phase_of = {n: i for i, phase in enumerate(PARALLEL_PLAN) for cmd in phase if cmd[0] == "build" for n in cmd[2:]}
    for r in recipes():  # a recipe that starts from a built model runs in a later phase than it
        if r.start in phase_of:
            assert phase_of[r.start] < phase_of[r.name], r.name


def test_a_built_start_is_read_back_before_its_readout_temperature(tmp_path, monkeypatch):
    """``build --only`` reads a start built earlier from disk; undoing the saved readout must be exact."""
    from tools.zoo import fallback

    model = build_model("planted")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fallback.readout(model, fallback.READOUT_SCALE)
    model.save_pretrained(tmp_path / "base")
    monkeypatch.setattr(fallback, "ZOO", tmp_path)
    back = fallback._load_built("base")
    assert all(torch.equal(back[k], state[k]) for k in state if k in back)
