"""DeepSeekMoE: transformers parity, routing references, expert parallelism, balancing, memory."""

from __future__ import annotations

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1 import sharding
from r1.models import moe as moe_lib
from r1.models.moe import (
    MoE,
    RoutingBias,
    capacity_keep_mask,
    grouped_ffn,
    route,
    routing_stats,
    update_model_routing_biases,
    update_routing_bias,
)
from r1.testing import tiny_moe_config


@nnx.jit
def _call(model, x, token_mask):
    """Jitted layer call (eager dispatch of every op is slow on CPU)."""
    return model(x, token_mask)


_route = jax.jit(route, static_argnums=2, static_argnames="group_fill")


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


# --------------------------------------------------------------------------- references
def _np_route(logits, bias, cfg, group_fill=-np.inf):
    """NumPy router: returns (sets of chosen experts per token, weights by expert, scores)."""
    logits = np.asarray(logits, np.float64)
    n, e = logits.shape
    if cfg.scoring_func == "sigmoid":
        scores = 1 / (1 + np.exp(-logits))
    else:
        z = np.exp(logits - logits.max(-1, keepdims=True))
        scores = z / z.sum(-1, keepdims=True)
    choice = scores + np.asarray(bias, np.float64)[None]
    g = cfg.n_group
    if g > 1:
        grouped = choice.reshape(n, g, e // g)
        if cfg.scoring_func == "sigmoid":
            group_scores = np.sort(grouped, -1)[..., -2:].sum(-1)
        else:
            group_scores = grouped.max(-1)
        keep_groups = np.argsort(-group_scores, -1)[:, : cfg.topk_group]
        keep = np.zeros((n, g), bool)
        np.put_along_axis(keep, keep_groups, True, -1)
        choice = np.where(np.repeat(keep, e // g, 1), choice, group_fill)
    idx = np.argsort(-choice, -1, kind="stable")[:, : cfg.num_experts_per_tok]
    w = np.take_along_axis(scores, idx, -1)
    if cfg.norm_topk_prob:
        w = w / (w.sum(-1, keepdims=True) + 1e-20)
    w = w * cfg.routed_scaling_factor
    return idx, w, scores


def _by_expert(idx, w, e):
    """[N, k] indices and weights -> dense [N, E] weights (0 where not chosen)."""
    out = np.zeros((idx.shape[0], e))
    np.put_along_axis(out, np.asarray(idx), np.asarray(w, np.float64), -1)
    return out


# ------------------------------------------------------------------ 1. transformers parity
def _hf_moe(cfg, seed):
    import torch as torch
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    hf_cfg = DeepseekV3Config(
        hidden_size=cfg.hidden_size,
        moe_intermediate_size=cfg.moe_intermediate_size,
        n_routed_experts=cfg.n_routed_experts,
        n_shared_experts=cfg.n_shared_experts,
        num_experts_per_tok=cfg.num_experts_per_tok,
        n_group=cfg.n_group,
        topk_group=cfg.topk_group,
        routed_scaling_factor=cfg.routed_scaling_factor,
        norm_topk_prob=cfg.norm_topk_prob,
        hidden_act="silu",
    )
    torch.manual_seed(seed)
    module = DeepseekV3MoE(hf_cfg).float().eval()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.2)
        module.gate.weight.normal_(0.0, 1.0)
        # Negative and positive biases: some biased scores fall below zero.
        module.gate.e_score_correction_bias.uniform_(-1.2, 0.4)
    return module


def _load_hf_weights(model: MoE, hf) -> None:
    f = model.cfg.moe_intermediate_size
    t = lambda p: jnp.asarray(p.detach().numpy())
    gate_up = t(hf.experts.gate_up_proj)  # [E, 2F, D]
    model.gate[...] = t(hf.gate.weight).T
    model.w_gate[...] = jnp.swapaxes(gate_up[:, :f, :], 1, 2)
    model.w_up[...] = jnp.swapaxes(gate_up[:, f:, :], 1, 2)
    model.w_down[...] = jnp.swapaxes(t(hf.experts.down_proj), 1, 2)  # [E, D, F] -> [E, F, D]
    model.e_score_correction_bias[...] = t(hf.gate.e_score_correction_bias)
    model.shared_experts.gate[...] = t(hf.shared_experts.gate_proj.weight).T
    model.shared_experts.up[...] = t(hf.shared_experts.up_proj.weight).T
    model.shared_experts.down[...] = t(hf.shared_experts.down_proj.weight).T


@pytest.mark.parametrize("gmm_impl", ["blocked", "ragged_dot"])
def test_matches_transformers_deepseek_v3_moe(gmm_impl):
    import torch

    cfg = tiny_moe_config(
        hidden_size=32,
        n_routed_experts=16,
        n_group=4,
        topk_group=2,
        num_experts_per_tok=4,
        moe_intermediate_size=16,
        n_shared_experts=2,
    )
    hf = _hf_moe(cfg, seed=0)
    model = MoE(cfg, nnx.Rngs(0), gmm_impl=gmm_impl)
    _load_hf_weights(model, hf)
    x = np.random.default_rng(0).normal(size=(3, 20, cfg.hidden_size)).astype(np.float32)

    with torch.no_grad():
        ref = hf(torch.from_numpy(x)).numpy()
        _, hf_w, hf_idx = hf.gate(torch.from_numpy(x))
    y, stats = _call(model, jnp.asarray(x), jnp.ones(x.shape[:2], bool))
    assert _rel(y, ref) < 1e-4

    logits = model.router_logits(jnp.asarray(x)).reshape(-1, cfg.n_routed_experts)
    idx, w, _ = _route(logits, model.e_score_correction_bias[...], cfg)
    assert [set(r) for r in np.asarray(idx).tolist()] == [set(r) for r in hf_idx.tolist()]
    e = cfg.n_routed_experts
    np.testing.assert_allclose(
        _by_expert(idx, w, e), _by_expert(hf_idx.numpy(), hf_w.numpy(), e), rtol=1e-5, atol=1e-6
    )
    # Some biased scores are negative, so the masked-group fill value matters (see `route`).
    scores = jax.nn.sigmoid(logits)
    assert np.any(np.asarray(scores + model.e_score_correction_bias[...][None]) < 0)
    assert float(stats.expert_load.sum()) == 3 * 20 * cfg.num_experts_per_tok


def test_route_matches_numpy_and_group_fill_matters():
    cfg = tiny_moe_config(n_routed_experts=16, n_group=4, topk_group=2, num_experts_per_tok=6)
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(256, 16)).astype(np.float32) * 2
    bias = rng.uniform(-1.5, 0.2, size=16).astype(np.float32)
    results = {}
    for fill in (-np.inf, 0.0):
        idx, w, scores = _route(jnp.asarray(logits), jnp.asarray(bias), cfg, group_fill=fill)
        ref_idx, ref_w, ref_scores = _np_route(logits, bias, cfg, group_fill=fill)
        assert [set(r) for r in np.asarray(idx).tolist()] == [set(r) for r in ref_idx.tolist()]
        np.testing.assert_allclose(_by_expert(idx, w, 16), _by_expert(ref_idx, ref_w, 16),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-5)
        results[fill] = [set(r) for r in np.asarray(idx).tolist()]
    # k=6 > 2 kept groups x ... with negative biased scores a 0.0 fill picks dropped groups.
    assert results[-np.inf] != results[0.0]


# --------------------------------------------------------------------- 2. softmax routing
@pytest.mark.parametrize("norm", [True, False])
def test_softmax_routing_matches_numpy(norm):
    cfg = tiny_moe_config(
        scoring_func="softmax", n_routed_experts=16, n_group=4, topk_group=2,
        num_experts_per_tok=3, norm_topk_prob=norm, routed_scaling_factor=1.5,
    )
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(128, 16)).astype(np.float32)
    bias = np.zeros(16, np.float32)
    idx, w, scores = _route(jnp.asarray(logits), jnp.asarray(bias), cfg)
    ref_idx, ref_w, ref_scores = _np_route(logits, bias, cfg)
    assert [set(r) for r in np.asarray(idx).tolist()] == [set(r) for r in ref_idx.tolist()]
    np.testing.assert_allclose(_by_expert(idx, w, 16), _by_expert(ref_idx, ref_w, 16),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(scores).sum(-1), 1.0, rtol=1e-5)
    sums = np.asarray(w).sum(-1)
    if norm:
        np.testing.assert_allclose(sums, 1.5, rtol=1e-5)
    else:
        assert np.all(sums < 1.5) and np.all(sums > 0)
    # The layer runs end to end with softmax scoring.
    model = MoE(cfg.replace(hidden_size=32, moe_intermediate_size=8), nnx.Rngs(0))
    y, stats = _call(model, jnp.ones((2, 4, 32)), jnp.ones((2, 4), bool))
    assert y.shape == (2, 4, 32) and bool(jnp.all(jnp.isfinite(y)))
    assert float(stats.expert_load.sum()) == 2 * 4 * 3


# ------------------------------------------------------------------ 3. expert parallelism
@functools.cache
def _sharded_case():
    cfg = tiny_moe_config(
        hidden_size=32, moe_intermediate_size=16, n_routed_experts=8, num_experts_per_tok=2,
        n_group=2, topk_group=1, n_shared_experts=1, aux_loss_alpha=0.1,
    )
    model = MoE(cfg, nnx.Rngs(3))
    model.e_score_correction_bias[...] = jnp.linspace(-0.05, 0.05, 8)
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(8, 12, 32)).astype(np.float32))
    token_mask = jnp.asarray(rng.random((8, 12)) > 0.2)
    target = jnp.asarray(rng.normal(size=(8, 12, 32)).astype(np.float32))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(params, rest, x, token_mask):
        y, stats = nnx.merge(graphdef, params, rest)(x, token_mask)
        return jnp.mean(jnp.square(y - target)) + stats.balance_loss, stats

    grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    return grad_fn, params, rest, x, token_mask, grad_fn(params, rest, x, token_mask)


@pytest.mark.parametrize(
    "mesh_shape",
    [dict(expert=8), dict(expert=4, tensor=2), dict(data=2, expert=2, tensor=2),
     dict(fsdp=2, expert=2, tensor=2), dict(fsdp=8)],
    ids=lambda d: "-".join(f"{k}{v}" for k, v in d.items()),
)
def test_sharded_matches_single_device(devices, mesh_shape):
    grad_fn, params, rest, x, token_mask, reference = _sharded_case()
    (loss0, stats0), grads0 = reference

    mesh = sharding.make_mesh(sharding.MeshConfig(**{"fsdp": 1, **mesh_shape}), devices)
    with sharding.use_mesh(mesh):
        p = sharding.place_state(params, mesh)
        r = sharding.place_state(rest, mesh)
        xs = jax.device_put(x, sharding.named_sharding(("batch", "length", "act_embed"),
                                                       x.shape, mesh))
        (loss1, stats1), grads1 = grad_fn(p, r, xs, token_mask)

    ep = mesh.shape["expert"]
    if ep > 1:
        assert p["w_gate"].sharding.spec[0] == "expert"
    assert p["w_gate"].addressable_shards[0].data.shape[0] == 8 // ep
    if mesh.shape["tensor"] > 1:
        assert p["w_down"].sharding.spec[1] == "tensor"
    assert _rel(loss1, loss0) < 1e-5
    np.testing.assert_array_equal(stats1.expert_load, stats0.expert_load)
    for path, g0 in jax.tree_util.tree_leaves_with_path(grads0):
        g1 = dict(jax.tree_util.tree_leaves_with_path(grads1))[path]
        assert _rel(g1, g0) < 1e-5, path
    assert float(jnp.abs(grads0["gate"][...]).max()) > 0


def test_create_sharded_model_splits_experts(devices):
    cfg = tiny_moe_config(hidden_size=32, moe_intermediate_size=16)
    mesh = sharding.make_mesh(sharding.MeshConfig(fsdp=1, expert=4, tensor=2), devices)
    model = sharding.create_sharded_model(lambda: MoE(cfg, nnx.Rngs(0)), mesh)
    assert model.w_up[...].sharding.spec == jax.sharding.PartitionSpec("expert", None, "tensor")
    assert model.e_score_correction_bias[...].sharding.spec == jax.sharding.PartitionSpec(
        "expert"
    )
    with sharding.use_mesh(mesh):
        y, _ = nnx.jit(lambda m, x, t: m(x, t))(model, jnp.ones((4, 8, 32)),
                                                jnp.ones((4, 8), bool))
    assert bool(jnp.all(jnp.isfinite(y)))


# --------------------------------------------------------------------------- 4. balancing
def test_bias_updates_balance_a_skewed_router():
    e, n = 16, 512
    cfg = tiny_moe_config(n_routed_experts=e, n_group=4, topk_group=2, num_experts_per_tok=2)
    favour = jnp.zeros((e,)).at[jnp.array([0, 5, 9])].set(3.0)

    @jax.jit
    def step(bias, key, rate):
        logits = jax.random.normal(key, (n, e)) + favour[None, :]
        idx, w, scores = route(logits, bias, cfg)
        stats = routing_stats(idx[None], scores[None], jnp.ones((1, n), bool), cfg)
        return update_routing_bias(bias, stats.expert_load, rate), stats

    bias = jnp.zeros((e,))
    ratios = []
    for i in range(150):
        bias, stats = step(bias, jax.random.key(i), 0.01)
        ratios.append(float(stats.max_mean_load_ratio))
    # Measured: 5.0 at the start, 1.29 averaged over the last 10 of 150 steps.
    assert ratios[0] > 3.0
    assert np.mean(ratios[-10:]) < 1.5
    np.testing.assert_array_equal(step(bias, jax.random.key(0), 0.0)[0], bias)  # rate 0

    # Gate weights use the unbiased affinities: same chosen set -> same weights.
    logits = jax.random.normal(jax.random.key(7), (n, e)) + favour[None, :]
    idx0, w0, _ = _route(logits, jnp.zeros((e,)), cfg)
    idx1, w1, _ = _route(logits, bias, cfg)
    d0, d1 = _by_expert(idx0, w0, e), _by_expert(idx1, w1, e)
    same = np.all((d0 > 0) == (d1 > 0), axis=-1)
    assert 0 < same.sum() < n  # the bias changed some choices and kept others
    np.testing.assert_allclose(d0[same], d1[same], rtol=1e-6)


def test_update_routing_bias_sign_rule():
    bias = jnp.array([0.1, -0.2, 0.0, 0.3])
    load = jnp.array([10.0, 2.0, 4.0, 4.0])  # mean 5
    np.testing.assert_allclose(
        update_routing_bias(bias, load, 0.01), [0.09, -0.19, 0.01, 0.31], rtol=1e-6
    )
    np.testing.assert_array_equal(update_routing_bias(bias, load, 0.0), bias)


def test_update_model_routing_biases_on_transformer():
    from r1.models.transformer import Transformer

    cfg = tiny_moe_config(attention_type="gqa", head_dim=16, num_mtp_layers=1)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(3, 128, (2, 8)), jnp.int32)
    out = nnx.jit(lambda m, t: m.forward(t))(model, tokens)
    layers = moe_lib.moe_layers(model)
    assert len(layers) == 3 and len(out.moe) == 2  # 2 decoder MoE layers + 1 MTP (not run)
    update_model_routing_biases(model, out.moe, 0.1)
    for layer, stats in zip(layers, out.moe):
        expected = update_routing_bias(jnp.zeros(8), stats.expert_load, 0.1)
        np.testing.assert_allclose(layer.e_score_correction_bias[...], expected)
    np.testing.assert_array_equal(layers[2].e_score_correction_bias[...], jnp.zeros(8))
    with pytest.raises(ValueError, match="MoE layers"):
        update_model_routing_biases(model, out.moe * 2, 0.1)


# ------------------------------------------------------------------------------ 5. memory
_SHAPE_RE = re.compile(r"tensor<((?:\d+x)+)[a-z]+\d*>|[a-z]+\d+\[([\d,]+)\]")


def _array_sizes(text: str) -> list[int]:
    sizes = []
    for m in _SHAPE_RE.finditer(text):
        dims = m.group(1)[:-1].split("x") if m.group(1) else m.group(2).split(",")
        sizes.append(math.prod(int(d) for d in dims))
    return sizes


def _memory_case(e, k=2, gmm_impl="blocked"):
    cfg = tiny_moe_config(
        hidden_size=32, moe_intermediate_size=64, n_routed_experts=e, num_experts_per_tok=k,
        n_group=1, topk_group=1, n_shared_experts=1,
    )
    model = MoE(cfg, nnx.Rngs(0), gmm_impl=gmm_impl)
    graphdef, state = nnx.split(model)
    x = jnp.ones((4, 128, 32))  # 512 tokens
    mask = jnp.ones((4, 128), bool)
    fwd = jax.jit(lambda s, x, m: nnx.merge(graphdef, s)(x, m)[0])
    return fwd, state, x, mask


def test_no_tokens_by_experts_by_hidden_arrays_and_flops_scale_with_k():
    n_tokens, e, d = 512, 64, 32
    limit = n_tokens * e * d
    fwd, state, x, mask = _memory_case(e)
    lowered = fwd.lower(state, x, mask)
    compiled = lowered.compile()
    for text in (lowered.as_text(), compiled.as_text()):
        sizes = _array_sizes(text)
        assert sizes and max(sizes) < limit, max(sizes)
    # Positive control: JAX's dense CPU lowering of ragged_dot does build [E, N k, D] arrays.
    dense_fwd, state_d, _, _ = _memory_case(e, gmm_impl="ragged_dot")
    assert max(_array_sizes(dense_fwd.lower(state_d, x, mask).as_text())) >= limit

    flops = {}
    for n_exp, k in ((8, 2), (64, 2), (64, 4)):
        f, s, x_, m_ = _memory_case(n_exp, k)
        flops[n_exp, k] = f.lower(s, x_, m_).compile().cost_analysis()["flops"]
    # 8x more experts: only the router grows (measured ratio 1.16); dense would be ~8x.
    assert flops[64, 2] / flops[8, 2] < 1.5
    # 2x experts per token: routed-expert FLOPs double (measured ratio 1.61 with the
    # router and shared expert unchanged).
    assert flops[64, 4] / flops[64, 2] > 1.5


def test_tpu_lowering_keeps_ragged_dot_when_asked_for():
    fwd, state, x, mask = _memory_case(64, gmm_impl="ragged_dot")
    text = fwd.trace(state, x, mask).lower(lowering_platforms=("tpu",)).as_text()
    assert "chlo.ragged_dot" in text
    assert max(_array_sizes(text)) < 512 * 64 * 32


def test_grouped_ffn_impls_agree_and_skip_rows_outside_groups():
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(40, 8)).astype(np.float32))
    wg, wu = (jnp.asarray(rng.normal(size=(5, 8, 6)).astype(np.float32)) for _ in range(2))
    wd = jnp.asarray(rng.normal(size=(5, 6, 8)).astype(np.float32))
    sizes = jnp.array([7, 0, 13, 1, 9], jnp.int32)  # 30 rows in groups, 10 outside
    ref = np.zeros((40, 8), np.float32)
    start = 0
    for g, size in enumerate(np.asarray(sizes)):
        rows = np.asarray(x)[start:start + size]
        h = np.asarray(jax.nn.silu(rows @ wg[g])) * (rows @ np.asarray(wu[g]))
        ref[start:start + size] = h @ np.asarray(wd[g])
        start += size
    for impl in ("blocked", "ragged_dot"):
        np.testing.assert_allclose(grouped_ffn(x, sizes, wg, wu, wd, impl), ref,
                                   rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------- 6. the bias is not a param
def test_routing_bias_is_state_not_param():
    cfg = tiny_moe_config(hidden_size=32, moe_intermediate_size=16)
    model = MoE(cfg, nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    assert "e_score_correction_bias" not in params
    assert set(params) == {"gate", "w_gate", "w_up", "w_down", "shared_experts"}
    biases = nnx.state(model, RoutingBias)
    assert set(biases) == {"e_score_correction_bias"}
    assert model.e_score_correction_bias.get_metadata()["axes"] == ("expert",)

    def loss(m):
        y, stats = m(jnp.ones((2, 4, 32)), jnp.ones((2, 4), bool))
        return jnp.sum(y) + stats.balance_loss

    grads = nnx.jit(nnx.grad(loss))(model)
    assert "e_score_correction_bias" not in grads
    assert "gate" in grads
    no_shared = MoE(cfg.replace(n_shared_experts=0), nnx.Rngs(0))
    assert "shared_experts" not in nnx.state(no_shared, nnx.Param)


# --------------------------------------------------------------------------- 7. padding
def test_padding_tokens_do_not_count():
    cfg = tiny_moe_config(hidden_size=32, moe_intermediate_size=16, aux_loss_alpha=1.0)
    model = MoE(cfg, nnx.Rngs(0))
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 10, 32)).astype(np.float32)
    mask = np.ones((3, 10), bool)
    mask[0, 6:] = False
    mask[2, :] = False  # a fully padded sequence
    y, stats = _call(model, jnp.asarray(x), jnp.asarray(mask))

    logits = model.router_logits(jnp.asarray(x)).reshape(30, 8)
    idx, _, scores = _route(logits, model.e_score_correction_bias[...], cfg)
    valid_idx = np.asarray(idx)[mask.reshape(-1)]
    np.testing.assert_array_equal(stats.expert_load, np.bincount(valid_idx.ravel(),
                                                                     minlength=8))
    assert float(stats.expert_load.sum()) == mask.sum() * 2

    # Balance loss reference: valid tokens only, mean over sequences with valid tokens.
    s = np.asarray(scores).reshape(3, 10, 8)
    per_seq = []
    for b in range(2):
        valid = mask[b]
        counts = np.bincount(np.asarray(idx).reshape(3, 10, 2)[b][valid].ravel(), minlength=8)
        f = 8 / (2 * valid.sum()) * counts
        p = (s[b][valid] / s[b][valid].sum(-1, keepdims=True)).mean(0)
        per_seq.append(np.sum(f * p))
    np.testing.assert_allclose(stats.balance_loss, np.mean(per_seq), rtol=1e-5)

    # Padding content changes nothing for valid tokens or statistics.
    x2 = x.copy()
    x2[~mask] = 100.0
    y2, stats2 = _call(model, jnp.asarray(x2), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(y2)[mask], np.asarray(y)[mask], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(stats2), jax.tree.leaves(stats), strict=True):
        np.testing.assert_array_equal(a, b)
    assert bool(jnp.all(jnp.isfinite(y2)))


def test_capacity_factor_drops_and_counts():
    cfg = tiny_moe_config(hidden_size=32, moe_intermediate_size=16, capacity_factor=0.5)
    model = MoE(cfg, nnx.Rngs(0))
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.normal(size=(2, 16, 32)).astype(np.float32))
    mask = jnp.ones((2, 16), bool).at[1, 8:].set(False)
    y, stats = _call(model, x, mask)
    capacity = math.ceil(0.5 * 32 * 2 / 8)

    idx, w, _ = _route(model.router_logits(x).reshape(32, 8),
                      model.e_score_correction_bias[...], cfg)
    keep = np.asarray(capacity_keep_mask(idx, mask.reshape(-1), 8, capacity))
    # NumPy reference of slot-major first-come priority, padding taking no capacity.
    ref = np.zeros((32, 2), bool)
    used = np.zeros(8, int)
    for slot in range(2):
        for t in range(32):
            if np.asarray(mask).reshape(-1)[t] and used[int(idx[t, slot])] < capacity:
                ref[t, slot] = True
                used[int(idx[t, slot])] += 1
    np.testing.assert_array_equal(keep, ref)
    n_valid = 24 * 2
    np.testing.assert_allclose(stats.dropped_fraction, (n_valid - ref.sum()) / n_valid)
    assert float(stats.dropped_fraction) > 0

    # Output: shared experts + kept assignments only.
    dropless = MoE(cfg.replace(capacity_factor=None), nnx.Rngs(0))
    nnx.update(dropless, nnx.state(model))
    xf = x.reshape(32, 32)
    routed = jax.jit(moe_lib.expert_ffn_dispatch)(
        xf, idx, w, jnp.asarray(ref), model.w_gate[...], model.w_up[...], model.w_down[...]
    )
    expected = routed.reshape(2, 16, 32) + nnx.jit(lambda m, x: m(x))(model.shared_experts, x)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    assert _call(dropless, x, mask)[1].dropped_fraction is None


def test_sharded_decode_step_with_replicated_tokens(devices):
    """One token cannot be split over the mesh: experts still shard, outputs are psum-ed."""
    cfg = tiny_moe_config(hidden_size=32, moe_intermediate_size=16)
    model = MoE(cfg, nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(8).normal(size=(1, 1, 32)).astype(np.float32))
    mask = jnp.ones((1, 1), bool)
    y0, _ = _call(model, x, mask)
    mesh = sharding.make_mesh(sharding.MeshConfig(fsdp=1, expert=4, tensor=2), devices)
    graphdef, state = nnx.split(model)
    with sharding.use_mesh(mesh):
        state = sharding.place_state(state, mesh)
        y1, _ = jax.jit(lambda s, x, m: nnx.merge(graphdef, s)(x, m))(state, x, mask)
    assert state["w_gate"][...].sharding.spec[0] == "expert"
    assert _rel(y1, y0) < 1e-5


@pytest.mark.parametrize("impl", ["blocked", "megablox", "ragged_dot"])
def test_bounded_rows_dispatch_equals_the_full_buffer(impl):
    """`bound_rows`: with 3 local experts and k = 5 a token has at most 3 local assignments, so
    a buffer of N x 3 rows (gate weights scaling the hidden rows, outputs scatter-added back)
    gives the full N x k buffer's outputs."""
    rng = np.random.default_rng(3)
    n, k, d, f, experts, local = 12, 5, 16, 8, 8, 3
    idx = np.stack([rng.permutation(experts)[:k] for _ in range(n)]).astype(np.int32)
    weight = jnp.asarray(rng.random((n, k)), jnp.float32)
    keep = jnp.asarray(rng.random((n, k)) > 0.2)
    x = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    w = [jnp.asarray(rng.normal(size=s) / 4, jnp.float32) for s in ((local, d, f),) * 2]
    w_down = jnp.asarray(rng.normal(size=(local, f, d)) / 4, jnp.float32)
    for offset in (0, 3, 5):
        run = lambda bound, offset=offset: moe_lib.expert_ffn_dispatch(
            x, jnp.asarray(idx), weight, keep, *w, w_down, offset, impl, bound_rows=bound
        )
        full, bounded = run(False), run(True)
        assert float(jnp.abs(full).max()) > 0
        np.testing.assert_allclose(bounded, full, rtol=1e-5, atol=1e-6)


def test_bounded_rows_dispatch_drops_the_ungrouped_rows(monkeypatch):
    """The bounded buffer asks its grouped matmul not to zero the rows past the grouped ones
    (megablox leaves them unwritten) and drops them in its scatter: NaN there changes nothing."""
    grouped_ffn = moe_lib.grouped_ffn
    asked = []

    def garbage_outside(x, group_sizes, *args, zeroed=True, **kwargs):
        asked.append(zeroed)
        y = grouped_ffn(x, group_sizes, *args, **kwargs)
        grouped = (jnp.arange(x.shape[0]) < jnp.sum(group_sizes))[:, None]
        return y if zeroed else jnp.where(grouped, y, jnp.nan)

    rng = np.random.default_rng(4)
    n, k, d, f, local = 6, 4, 8, 4, 2
    idx = jnp.asarray(np.stack([rng.permutation(8)[:k] for _ in range(n)]), jnp.int32)
    weight = jnp.asarray(rng.random((n, k)), jnp.float32)
    keep = jnp.ones((n, k), bool)
    x = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    w = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((local, d, f),) * 2]
    w_down = jnp.asarray(rng.normal(size=(local, f, d)), jnp.float32)
    run = lambda bound: moe_lib.expert_ffn_dispatch(  # noqa: E731
        x, idx, weight, keep, *w, w_down, 2, "blocked", bound_rows=bound
    )
    full = run(False)
    monkeypatch.setattr(moe_lib, "grouped_ffn", garbage_outside)
    bounded = run(True)
    assert asked == [False]
    assert bool(jnp.all(jnp.isfinite(bounded))) and float(jnp.abs(full).max()) > 0
    np.testing.assert_allclose(bounded, full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("joined", [False, True], ids=["split", "joined"])
def test_dense_local_experts_equal_the_dispatch(joined):
    """`expert_ffn_dense` (every token through every local expert, scaled by its gate weight
    for it) gives `expert_ffn_dispatch`'s sums: chosen, unchosen and dropped assignments."""
    rng = np.random.default_rng(5)
    n, k, d, f, experts, local = 10, 3, 16, 8, 8, 2
    idx = jnp.asarray(np.stack([rng.permutation(experts)[:k] for _ in range(n)]), jnp.int32)
    weight = jnp.asarray(rng.random((n, k)), jnp.float32)
    keep = jnp.asarray(rng.random((n, k)) > 0.2)
    x = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    w_gate, w_up = (jnp.asarray(rng.normal(size=(local, d, f)) / 4, jnp.float32) for _ in "gu")
    w_down = jnp.asarray(rng.normal(size=(local, f, d)) / 4, jnp.float32)
    weights = (jnp.stack([w_gate, w_up], axis=2), None) if joined else (w_gate, w_up)
    for offset in (0, 3, 6):
        args = (x, idx, weight, keep, *weights, w_down, offset)
        dispatched = moe_lib.expert_ffn_dispatch(*args, "blocked")
        assert float(jnp.abs(dispatched).max()) > 0
        dense = moe_lib.expert_ffn_dense(*args)
        np.testing.assert_allclose(dense, dispatched, rtol=1e-5, atol=1e-6)
