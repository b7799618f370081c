"""Sharded forward/loss/grad equals the single-device result on every mesh shape."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from r1 import sharding, testing
from r1.models.transformer import Transformer

MESHES = {
    "data8": sharding.MeshConfig(data=8, fsdp=1),
    "fsdp4_tensor2": sharding.MeshConfig(fsdp=4, tensor=2),
    "data2_fsdp2_tensor2": sharding.MeshConfig(data=2, fsdp=2, tensor=2),
}


def _loss_fn(graphdef):
    def loss(state, tokens):
        model = nnx.merge(graphdef, state)
        logits = model(tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    return loss


def _reference(cfg, tokens):
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    one = sharding.make_mesh(sharding.MeshConfig(fsdp=1), devices=jax.devices()[:1])
    state = jax.device_put(state, jax.sharding.NamedSharding(one, P()))
    loss, grads = jax.jit(jax.value_and_grad(_loss_fn(graphdef)))(state, tokens)
    return loss, grads


def _max_rel(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    worst = 0.0
    for x, y in zip(leaves_a, leaves_b):
        x, y = np.asarray(x), np.asarray(y)
        worst = max(worst, float(np.abs(x - y).max() / max(np.abs(y).max(), 1e-12)))
    return worst


@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_loss_and_grads_match_single_device(mesh_name, devices):
    cfg = testing.tiny_dense_config(num_heads=4, num_kv_heads=2)
    tokens = jnp.asarray(testing.random_tokens(0, 8, 17, cfg.vocab_size))
    ref_loss, ref_grads = _reference(cfg, tokens)

    mesh = sharding.make_mesh(MESHES[mesh_name])
    model = sharding.create_sharded_model(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), mesh)
    graphdef, state = nnx.split(model)
    state_sh = sharding.state_shardings(state, mesh)
    batch_sh = sharding.named_sharding(("batch", "length"), tokens.shape, mesh)
    step = jax.jit(
        jax.value_and_grad(_loss_fn(graphdef)),
        in_shardings=(state_sh, batch_sh),
        out_shardings=(jax.sharding.NamedSharding(mesh, P()), state_sh),
    )
    with sharding.use_mesh(mesh):
        loss, grads = step(state, jax.device_put(tokens, batch_sh))
    assert abs(float(loss) - float(ref_loss)) / abs(float(ref_loss)) < 1e-5
    assert _max_rel(grads, ref_grads) < 1e-5
    # parameters really are split where the mesh allows it
    gate = model.layers[0].mlp.gate[...]
    expected = sharding.logical_to_spec(("embed", "mlp"), gate.shape, mesh)
    assert gate.sharding.spec == expected
    shard_elems = gate.addressable_shards[0].data.size
    split = np.prod([mesh.shape[a] for a in jax.tree.leaves(tuple(expected))] or [1])
    assert shard_elems * split == gate.size
    if mesh_name != "data8":
        assert split > 1
    assert grads["layers"][0]["mlp"]["gate"][...].sharding.spec == expected


def test_rules_drop_axes_that_do_not_divide(devices):
    mesh = sharding.make_mesh(sharding.MeshConfig(fsdp=4, tensor=2))
    assert sharding.logical_to_spec(("embed", "mlp"), (64, 128), mesh) == P("fsdp", "tensor")
    assert sharding.logical_to_spec(("embed", "mlp"), (6, 3), mesh) == P(None, None)
    assert sharding.logical_to_spec(("batch", "length"), (8, 5), mesh) == P("fsdp", None)
    with pytest.raises(ValueError, match="no sharding rule"):
        sharding.logical_to_spec(("nonsense",), (4,), mesh)


def test_custom_rules_change_the_layout(devices):
    mesh = sharding.make_mesh(sharding.MeshConfig(fsdp=4, tensor=2))
    rules = tuple((n, None if n == "embed" else a) for n, a in sharding.DEFAULT_RULES)
    assert sharding.logical_to_spec(("embed", "mlp"), (64, 128), mesh, rules) == P(None, "tensor")
    with sharding.axis_rules(rules):
        assert sharding.logical_to_spec(("embed",), (64,), mesh) == P(None)


def test_mesh_config_errors(devices):
    assert sharding.MeshConfig(data=2, fsdp=-1, tensor=2).shape(8) == (2, 2, 1, 2)
    with pytest.raises(ValueError, match="at most one axis"):
        sharding.MeshConfig(data=-1, fsdp=-1).shape(8)
    with pytest.raises(ValueError, match="needs 6 devices"):
        sharding.MeshConfig(data=3, fsdp=2).shape(8)
    with pytest.raises(ValueError, match="not divisible"):
        sharding.MeshConfig(data=3).shape(8)


MOE_MESHES = {
    "expert8": sharding.MeshConfig(fsdp=1, expert=8),
    "fsdp2_expert2_tensor2": sharding.MeshConfig(fsdp=2, expert=2, tensor=2),
    "data2_expert4": sharding.MeshConfig(data=2, fsdp=1, expert=4),
}


@pytest.mark.parametrize("mesh_name", list(MOE_MESHES))
def test_moe_model_loss_and_grads_match_single_device(mesh_name, devices):
    """MLA + DeepSeekMoE + MTP: expert- and tensor-parallel meshes give the 1-device numbers."""
    from r1.losses import language_model_loss

    cfg = testing.tiny_moe_config()
    tokens = jnp.asarray(testing.random_tokens(1, 8, 13, cfg.vocab_size))

    def loss_fn(graphdef):
        def loss(state, tokens):
            model = nnx.merge(graphdef, state)
            out = model.forward(tokens, with_mtp=True)
            total, _ = language_model_loss(out, tokens, jnp.ones(tokens.shape, bool), 0.3)
            return total

        return loss

    graphdef, ref_state = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
    params = lambda s: nnx.split_state(s, nnx.Param, ...)[0]  # noqa: E731
    ref_loss, ref_grads = jax.jit(jax.value_and_grad(loss_fn(graphdef)))(ref_state, tokens)

    mesh = sharding.make_mesh(MOE_MESHES[mesh_name])
    model = sharding.create_sharded_model(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), mesh)
    graphdef, state = nnx.split(model)
    state_sh = sharding.state_shardings(state, mesh)
    batch_sh = sharding.named_sharding(("batch", "length"), tokens.shape, mesh)
    step = jax.jit(
        jax.value_and_grad(loss_fn(graphdef)),
        in_shardings=(state_sh, batch_sh),
        out_shardings=(jax.sharding.NamedSharding(mesh, P()), state_sh),
    )
    with sharding.use_mesh(mesh):
        loss, grads = step(state, jax.device_put(tokens, batch_sh))
    assert abs(float(loss) - float(ref_loss)) / abs(float(ref_loss)) < 1e-5
    assert _max_rel(params(grads), params(ref_grads)) < 1e-5
    w_up = model.layers[1].mlp.w_up[...]
    assert "expert" in jax.tree.leaves(tuple(w_up.sharding.spec))


def test_use_cpu_devices_sets_the_count_before_jax_starts(devices, tmp_path):
    assert sharding.use_cpu_devices(8) == 8  # the count in effect: nothing to change
    with pytest.raises(RuntimeError, match="already started with 8 device"):
        sharding.use_cpu_devices(3)
    with pytest.raises(ValueError, match="count must be >= 1"):
        sharding.use_cpu_devices(0)
    assert sharding.host_cores() >= 1
    script = (
        "from r1 import sharding\n"
        "assert sharding.use_cpu_devices(3) == 3\n"
        "import jax\n"
        "print(len(jax.devices('cpu')))\n"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "3"
