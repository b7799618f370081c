"""The megablox grouped matmul (the TPU path of `grouped_ffn`): parity with the blocked and
ragged_dot forms in interpret mode on CPU (forward, gradients, fused gate/up, an MoE layer, an
expert mesh), and its TPU lowering: a Pallas `tpu_custom_call`, no dense [experts, rows, out]
product."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from r1 import sharding
from r1.models import grouped_matmul as gmm_lib
from r1.models.moe import MoE, grouped_ffn, resolve_gmm_impl
from r1.testing import tiny_moe_config

SIZES = (7, 0, 13, 1, 9)  # uneven, one empty group; 30 of 40 rows grouped, 10 past the groups
SMALL_TILES = gmm_lib._MegabloxTiling(16, 16, 8, whole=0)  # several row/k/n tiles, ragged k, n


def _case(fused: bool, m: int = 40, d: int = 24, f: int = 12, dtype=jnp.float32):
    rng = np.random.default_rng(7)
    g = len(SIZES)
    arr = lambda *shape: jnp.asarray(rng.normal(size=shape) / np.sqrt(shape[1]), dtype)
    x = jnp.asarray(rng.normal(size=(m, d)), dtype)
    w_gate = arr(g, d, 2, f) if fused else arr(g, d, f)
    w_up = None if fused else arr(g, d, f)
    return x, jnp.asarray(SIZES, jnp.int32), w_gate, w_up, arr(g, f, d)


def _value_and_grads(ffn, x, sizes, w_gate, w_up, w_down):
    probe = jnp.asarray(np.random.default_rng(1).normal(size=x.shape), jnp.float32)

    def loss(x, w_gate, w_up, w_down):
        y = ffn(x, sizes, w_gate, w_up, w_down)
        return jnp.sum(y.astype(jnp.float32) * probe), y

    grad = jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)
    (_, y), grads = jax.jit(grad)(x, w_gate, w_up, w_down)
    return y, grads


@pytest.mark.parametrize("fused", [False, True], ids=["split", "fused"])
def test_megablox_matches_blocked_and_ragged_dot(fused):
    args = _case(fused)
    y_ref, g_ref = _value_and_grads(lambda *a: grouped_ffn(*a, impl="blocked"), *args)
    assert float(jnp.abs(y_ref[30:]).max()) == 0  # rows past the groups: zeros
    impls = {
        "ragged_dot": lambda *a: grouped_ffn(*a, impl="ragged_dot"),
        "megablox": lambda *a: grouped_ffn(*a, impl="megablox"),
    }
    if not fused:
        impls["megablox_small_tiles"] = lambda *a: gmm_lib._megablox_ffn(*a, tiling=SMALL_TILES)
    for name, ffn in impls.items():
        y, grads = _value_and_grads(ffn, *args)
        np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5, err_msg=name)
        for i, (g, want) in enumerate(zip(grads, g_ref)):
            if want is None:
                continue
            assert bool(jnp.all(jnp.isfinite(g))), (name, i)
            np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-5, err_msg=f"{name} grad {i}")
        if name.startswith("megablox"):
            # The empty group's weights get zero gradient, rows past the groups zero x-gradient.
            assert float(jnp.abs(grads[1][1]).max()) == 0 and float(jnp.abs(grads[3][1]).max()) == 0
            assert float(jnp.abs(grads[0][30:]).max()) == 0


def test_megablox_bfloat16_forward():
    args = _case(fused=True, dtype=jnp.bfloat16)
    got = jax.jit(lambda *a: grouped_ffn(*a, impl="megablox"))(*args)
    want = jax.jit(lambda *a: grouped_ffn(*a, impl="blocked"))(*args)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=2e-2, atol=2e-2
    )


def test_auto_picks_by_platform():
    assert resolve_gmm_impl("auto") == "blocked"  # this CPU host
    with pytest.raises(ValueError, match="megablox"):
        resolve_gmm_impl("pallas")


def test_tiny_moe_layer_forward_megablox_matches_blocked():
    """The tiny model's MoE layer with fused gate/up weights, dispatching in token chunks (a
    scan under checkpoint), padding tokens included."""
    cfg = tiny_moe_config(fused_projections=True, moe_token_chunk_size=8)
    model = MoE(cfg, nnx.Rngs(0), gmm_impl="blocked")
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 11, cfg.hidden_size)), jnp.float32)
    token_mask = jnp.asarray(rng.random((2, 11)) > 0.2)
    run = nnx.jit(lambda model, x, token_mask: model(x, token_mask))
    want = run(model, x, token_mask)
    model.gmm_impl = "megablox"
    got = run(model, x, token_mask)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


def test_expert_parallel_megablox_matches_one_device(devices):
    """Expert (4) x tensor (2) mesh: megablox inside the dispatch `shard_map` (run there
    without varying-axes checks, which its pallas_call does not support) gives the gradients
    of one device (there with the blocked form)."""
    cfg = tiny_moe_config(hidden_size=32, moe_intermediate_size=16, n_shared_experts=1)
    model = MoE(cfg, nnx.Rngs(3), gmm_impl="blocked")
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(4, 6, 32)), jnp.float32)
    token_mask = jnp.asarray(rng.random((4, 6)) > 0.2)

    def grads(model):
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def loss(params):
            y, _ = nnx.merge(graphdef, params, rest)(x, token_mask)
            return jnp.sum(jnp.square(y))

        return params, jax.jit(jax.value_and_grad(loss))

    params, fn = grads(model)
    want = fn(params)
    model.gmm_impl = "megablox"
    params, fn = grads(model)
    mesh = sharding.make_mesh(sharding.MeshConfig(fsdp=1, expert=4, tensor=2), devices)
    with sharding.use_mesh(mesh):
        got = fn(sharding.place_state(params, mesh))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))


# ------------------------------------------------------------------------ TPU lowering
_CONV = re.compile(r"= \w+\[([\d,]*)\][^ ]* convolution\(")


def _expert_convolutions(text: str, groups: int, rows: int) -> list[str]:
    """Convolutions (XLA TPU's dots) whose output is [groups, rows, ...]: a dense grouped matmul."""
    found = []
    for match in _CONV.finditer(text):
        dims = [int(d) for d in match.group(1).split(",") if d]
        if len(dims) >= 3 and dims[0] == groups and dims[1] == rows:
            found.append(match.group(0))
    return found


def test_tpu_auto_lowers_to_megablox_not_a_dense_product():
    pytest.importorskip("libtpu")
    from r1.aot import topology_devices
    from r1.aot.cost import optimized_hlo

    devices = topology_devices("v5e:2x2")
    m, d, f, g = 256, 128, 256, 4
    one = sharding.make_mesh(devices=devices[:1])
    texts = {}
    with sharding.use_mesh(one):
        assert resolve_gmm_impl("auto") == "megablox"
        spec = lambda *shape, dt=jnp.bfloat16: jax.ShapeDtypeStruct(
            shape, dt, sharding=NamedSharding(one, PartitionSpec())
        )
        args = (spec(m, d), spec(g, dt=jnp.int32), spec(g, d, 2, f), None, spec(g, f, d))
        for impl in ("auto", "ragged_dot"):

            def loss(x, sizes, w_gate_up, w_up, w_down, impl=impl):
                y = grouped_ffn(x, sizes, w_gate_up, w_up, w_down, impl)
                return jnp.sum(y.astype(jnp.float32))

            step = jax.value_and_grad(loss, argnums=(0, 2, 4))
            texts[impl] = optimized_hlo(jax.jit(step).lower(*args))
    # Forward: the fused gate/up gmm and the down gmm; backward: gmm for the input gradients,
    # tgmm for the weight gradients.
    assert texts["auto"].count('custom_call_target="tpu_custom_call"') >= 4
    assert not _expert_convolutions(texts["auto"], g, m)
    # The finding behind "auto": this jax/libtpu lowers ragged_dot on TPU to a dense
    # [experts, rows, out] convolution. If this fails, ragged_dot may have become native on
    # TPU: revisit `resolve_gmm_impl`.
    assert _expert_convolutions(texts["ragged_dot"], g, m)

    # The MoE layer on an expert-parallel TPU mesh: megablox inside the dispatch shard_map.
    cfg = tiny_moe_config(hidden_size=128, moe_intermediate_size=128, dtype="bfloat16")
    mesh = sharding.make_mesh(sharding.MeshConfig(fsdp=1, expert=4), devices)
    with sharding.use_mesh(mesh):
        graphdef, state = nnx.split(nnx.eval_shape(lambda: MoE(cfg, nnx.Rngs(0))))
        state = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            state,
            sharding.state_shardings(state, mesh),
        )
        rep = NamedSharding(mesh, PartitionSpec())
        x = jax.ShapeDtypeStruct((2, 32, 128), jnp.bfloat16, sharding=rep)
        token_mask = jax.ShapeDtypeStruct((2, 32), jnp.bool_, sharding=rep)

        def layer_loss(state, x, token_mask):
            y, _ = nnx.merge(graphdef, state)(x, token_mask)
            return jnp.sum(y.astype(jnp.float32))

        text = optimized_hlo(jax.jit(jax.grad(layer_loss)).lower(state, x, token_mask))
    assert 'custom_call_target="tpu_custom_call"' in text
    # Each device's kernels (forward and backward) state the local experts' share of the
    # routed rows, and the cost report counts that share of their stated flops.
    from r1.aot.loops import kernel_cost, parse_computations
    from r1.loop_scopes import stated_row_share

    kernels = [line for line in text.splitlines() if "tpu_custom_call" in line and " = " in line]
    share = (cfg.n_routed_experts // 4) / cfg.n_routed_experts
    assert {stated_row_share(re.search(r'op_name="([^"]*)"', k).group(1)) for k in kernels} == {
        share
    }
    stated = sum(float(f) for f in re.findall(r'"cost_estimate":\{[^}]*?"flops":"(\d+)"', text))
    _, comps = parse_computations(text)
    counted = sum(kernel_cost(comp).flops for comp in comps.values())
    assert stated > 0 and counted == pytest.approx(share * stated, rel=1e-6)
    local = cfg.n_routed_experts // 4
    assert not _expert_convolutions(text, local, 2 * 32 * cfg.num_experts_per_tok)
