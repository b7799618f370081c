"""`SamplingConfig.stationary_weights`: decoding with the dense weights laid out once over every
device (`r1.sharding.STATIONARY_DECODE_RULES`) samples the same tokens as the training layout,
for MLA + MoE and GQA models, static and slot decodes; `relayout` moves an array between two
layouts by all-to-alls, without replicating it."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from r1 import sharding, testing
from r1.models.transformer import Transformer
from r1.sampling import SamplingConfig
from r1.sampling.sampler import left_pad, make_sampler

MESH = sharding.MeshConfig(data=1, fsdp=2, expert=2, tensor=2)


@pytest.mark.parametrize(
    "model, slots, k",
    [("moe", 0, 6), ("moe", 4, 2), ("dense", 0, 0)],
    ids=["mla-moe-static", "mla-moe-slots", "gqa-static"],
)
def test_stationary_weights_sample_the_same_tokens(devices, model, slots, k):
    mesh = sharding.make_mesh(MESH, devices)
    # Of 8 experts, 4 on each expert shard. Six per token: every token through every local
    # expert (`expert_ffn_dense`). Two per token: the sorted row buffer bounded by the local
    # experts (`expert_ffn_dispatch(bound_rows=True)`).
    moe = dict(num_experts_per_tok=k, n_group=1, topk_group=1)
    cfg = testing.tiny_moe_config(**moe) if model == "moe" else testing.tiny_dense_config()
    graphdef, state = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
    with sharding.use_mesh(mesh):
        state = sharding.place_state(state, mesh)
    tokens, mask = (np.asarray(a) for a in left_pad([[5, 6, 7], [8, 9], [10], [4]], 8, 0))
    out = {}
    for stationary in (False, True):
        config = SamplingConfig(
            max_new_tokens=5,
            num_samples=2,
            slots=slots,
            eos_ids=(3,),
            stationary_weights=stationary,
        )
        out[stationary] = make_sampler(graphdef, config, mesh)(
            state, tokens, mask, jax.random.key(2)
        )
    np.testing.assert_array_equal(out[True].tokens, out[False].tokens)
    np.testing.assert_array_equal(out[True].mask, out[False].mask)
    np.testing.assert_allclose(out[True].logprobs, out[False].logprobs, atol=2e-5)


def test_stationary_and_gathered_weights_are_exclusive():
    with pytest.raises(ValueError, match="gather_weights and stationary_weights"):
        SamplingConfig(gather_weights=True, stationary_weights=True)


PROJECTED = ("batch", "length", "act_heads", "kv_lora")
AT_CACHE = ("cache_batch", "length", "cache_heads", None)


def _there_and_back(x):
    y = sharding.relayout(x, PROJECTED, AT_CACHE)
    return y, sharding.relayout(y * 2, AT_CACHE, PROJECTED)


def test_relayout_keeps_the_values_and_ends_in_the_target_layout(devices):
    """The MLA decode's query move: from the projections' layout (rows whole, heads over
    fsdp x tensor, latent over expert) to the cache's (rows over fsdp x expert, heads over
    tensor) and back."""
    mesh = sharding.make_mesh(MESH, devices)
    x = np.random.default_rng(0).normal(size=(8, 1, 4, 6)).astype(np.float32)
    with sharding.use_mesh(mesh), sharding.axis_rules(sharding.STATIONARY_DECODE_RULES):
        y, back = jax.jit(_there_and_back)(x)
    np.testing.assert_array_equal(np.asarray(y), x)
    np.testing.assert_array_equal(np.asarray(back), 2 * x)
    assert y.sharding.is_equivalent_to(
        NamedSharding(mesh, PartitionSpec(("fsdp", "expert"), None, "tensor", None)), 4
    )
    assert back.sharding.is_equivalent_to(
        NamedSharding(mesh, PartitionSpec(None, None, ("fsdp", "tensor"), "expert")), 4
    )


def test_relayout_moves_by_all_to_all_where_one_constraint_replicates():
    """On a 64-chip TPU mesh (fsdp 4, expert 8, tensor 2) XLA turns the one-constraint move
    into an all-reduce of the replicated array (the DeepSeek-V3 decode's 134 MB per layer and
    chip on 1,024 chips); `relayout` is all-to-alls."""
    pytest.importorskip("libtpu")
    from r1.aot import topology_devices

    mesh = sharding.make_mesh(
        sharding.MeshConfig(data=1, fsdp=4, expert=8, tensor=2), topology_devices("v5p:4x4x4")
    )

    def one_constraint(x):
        y = sharding.shard(sharding.shard(x, PROJECTED), AT_CACHE)
        return y, sharding.shard(sharding.shard(y * 2, AT_CACHE), PROJECTED)

    x = jax.ShapeDtypeStruct((64, 1, 16, 64), np.float32)
    texts = {}
    for name, fn in (("one", one_constraint), ("relayout", _there_and_back)):
        with sharding.use_mesh(mesh), sharding.axis_rules(sharding.STATIONARY_DECODE_RULES):
            texts[name] = jax.jit(fn).lower(x).compile().as_text()
    assert "all-reduce" in texts["one"]
    assert "all-reduce" not in texts["relayout"] and "all-gather" not in texts["relayout"]
    assert "all-to-all" in texts["relayout"]


def test_only_the_stationary_rules_split_the_cache_apart_and_keep_tokens_whole():
    assert not sharding.cache_rows_apart(sharding.DEFAULT_RULES)
    assert sharding.cache_rows_apart(sharding.STATIONARY_DECODE_RULES)
    assert sharding.rule_axes("act_tokens") == ("data", "fsdp", "expert")
    assert sharding.rule_axes("act_tokens", sharding.STATIONARY_DECODE_RULES) == ("data",)
    assert sharding.rule_axes("length") == ()
