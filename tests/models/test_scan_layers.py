"""`ModelConfig.scan_layers`: stacked layer parameters run under `lax.scan` give the same numbers
as the unrolled model (forward, MoE statistics, gradients, cached greedy decoding, routing-bias
updates), convert both ways through the HF layout, shard by the rules, and keep the compiled
program's size independent of depth."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1 import sharding
from r1.models import hf
from r1.models.config import ModelConfig
from r1.models.moe import update_model_routing_biases
from r1.models.transformer import LayerStack, Transformer, flat_variables, unstack_layers
from r1.sampling.kv_cache import cache_bytes_per_token, init_cache
from r1.sampling.sampler import SamplingConfig, make_sampler, sample
from r1.testing import tiny_dense_config, tiny_moe_config

# 2 dense + 3 MoE layers (two scanned blocks), MLA with q-LoRA, YaRN, one MTP depth (unscanned).
MOE = tiny_moe_config(num_layers=5, first_k_dense_replace=2)
DENSE = tiny_dense_config(num_layers=3)


def _pair(cfg: ModelConfig, tmp_path, **overrides) -> tuple[Transformer, Transformer]:
    """The same weights unrolled and scanned (converted through the HF layout)."""
    plain = Transformer(cfg, rngs=nnx.Rngs(0))
    hf.save(plain, path=str(tmp_path))
    _, scanned = hf.load(str(tmp_path), scan_layers=True, **overrides)
    if overrides:
        _, plain = hf.load(str(tmp_path), **overrides)
    return plain, scanned


def _tokens(shape=(3, 11), seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(1, 96, shape), jnp.int32)


def test_layer_groups():
    assert MOE.replace(scan_layers=True).layer_groups() == ((0, 2), (2, 3))
    assert MOE.layer_groups() == tuple((i, 1) for i in range(5))
    assert DENSE.replace(scan_layers=True).layer_groups() == ((0, 3),)
    assert MOE.replace(scan_layers=True, first_k_dense_replace=0).layer_groups() == ((0, 5),)


@nnx.jit
def _forward_and_grad(model, tokens, mask):
    """(ModelOutput, gradient of sum(logits * fixed weights) w.r.t. the parameters)."""
    weights = jax.random.normal(jax.random.key(1), (*tokens.shape, model.config.vocab_size))

    def loss(model):
        out = model.forward(tokens, attention_mask=mask)
        return jnp.sum(out.logits * weights), out

    grads, out = nnx.grad(loss, has_aux=True)(model)
    return out, grads


@nnx.jit(static_argnums=(4,))
def _sample(model, prompts, prompt_mask, key, config):
    return sample(model, prompts, prompt_mask, key, config)


@pytest.mark.parametrize("cfg", [MOE, DENSE], ids=["mla_moe", "gqa_dense"])
@pytest.mark.parametrize("remat", ["none", "full"])
def test_scanned_forward_and_gradients_equal_unrolled(cfg, remat, tmp_path):
    plain, scanned = _pair(cfg, tmp_path, remat_policy=remat)
    assert all(isinstance(block, LayerStack) for block in scanned.layers)
    tokens = _tokens()
    mask = jnp.ones(tokens.shape, bool).at[0, :3].set(False)
    a, ga = _forward_and_grad(plain, tokens, mask)
    b, gb = _forward_and_grad(scanned, tokens, mask)
    np.testing.assert_allclose(a.logits, b.logits, atol=2e-5)
    moe_layers = sum(cfg.is_moe_layer(i) for i in range(cfg.num_layers))
    assert len(a.moe) == len(b.moe) == moe_layers
    for sa, sb in zip(a.moe, b.moe):
        np.testing.assert_allclose(sa.expert_load, sb.expert_load, atol=1e-6)

    np.testing.assert_allclose(ga["embed"]["embedding"][...], gb["embed"]["embedding"][...],
                               atol=2e-4)  # fmt: skip
    for block, (first, count) in enumerate(scanned.config.layer_groups()):
        for j in range(count):
            want = jax.tree.leaves(ga["layers"][first + j])
            got = [x[j] for x in jax.tree.leaves(gb["layers"][block]["layer"])]
            for w, g in zip(want, got):
                np.testing.assert_allclose(w, g, atol=2e-4)


@pytest.mark.parametrize("unstack", [True, False], ids=["unstacked", "scanned"])
@pytest.mark.parametrize("cfg", [MOE, DENSE], ids=["mla_moe", "gqa_dense"])
def test_scanned_cached_greedy_decoding_equals_unrolled(cfg, unstack, tmp_path):
    plain, scanned = _pair(cfg, tmp_path)
    prompts = _tokens((2, 6), seed=3)
    prompt_mask = jnp.ones(prompts.shape, bool).at[1, :2].set(False)
    config = SamplingConfig(
        max_new_tokens=12,
        greedy=True,
        num_samples=2,
        eos_ids=(),
        decode_segments=3,
        unstack_layers=unstack,
    )
    a = _sample(plain, prompts, prompt_mask, jax.random.key(0), config)
    b = _sample(scanned, prompts, prompt_mask, jax.random.key(0), config)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)
    # The cache holds the same bytes per token: C + R (MLA) or 2 KV D (GQA) per layer.
    plain_cache = init_cache(plain.config, 2, 8)
    scanned_cache = init_cache(scanned.config, 2, 8)
    assert len(scanned_cache["layers"]) == len(scanned.layers)
    assert cache_bytes_per_token(plain_cache) == cache_bytes_per_token(scanned_cache)


def test_unstack_layers_gives_the_unrolled_model_variable_for_variable(tmp_path):
    """`unstack_layers` of a scanned model (two blocks, MoE routing biases, an MTP depth) holds
    exactly the unrolled model's variables at the unrolled paths, inside jit too."""
    plain, scanned = _pair(MOE, tmp_path)
    stats = nnx.jit(lambda m, t: m.forward(t).moe)(plain, _tokens())
    update_model_routing_biases(plain, stats, 0.1)  # a different bias per MoE layer
    update_model_routing_biases(scanned, stats, 0.1)
    assert unstack_layers(plain) is plain
    graphdef, state = nnx.split(scanned)

    @jax.jit
    def split(state):
        return nnx.state(unstack_layers(nnx.merge(graphdef, state)))

    for unstacked_state in (nnx.state(unstack_layers(scanned)), split(state)):
        want = flat_variables(nnx.state(plain))
        got = flat_variables(unstacked_state)
        assert set(got) == set(want) and any(p[0] == "layers" and p[1] == 4 for p in got)
        for path, variable in want.items():
            assert type(got[path]) is type(variable), path
            np.testing.assert_array_equal(got[path].get_value(), variable.get_value(), path)
    unstacked = unstack_layers(scanned)
    assert not unstacked.config.scan_layers and len(unstacked.layers) == MOE.num_layers
    tokens = _tokens()
    forward = nnx.jit(lambda m, t: m(t))  # eager: op by op, slow
    np.testing.assert_allclose(forward(unstacked, tokens), forward(plain, tokens), atol=2e-5)


def test_unstacked_sampler_has_no_loop_over_layers():
    """With `unstack_layers` the sampler of a scanned model lowers to as many while loops as
    that of the unrolled model; without, the prefill and each decode segment's step also loop
    over each scanned block."""

    def loops(scan: bool, unstack: bool) -> int:
        cfg = MOE.replace(scan_layers=scan)
        graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
        config = SamplingConfig(
            max_new_tokens=8, greedy=True, decode_segments=2, unstack_layers=unstack
        )

        def run(state, prompts, mask):
            return sample(nnx.merge(graphdef, state), prompts, mask, jax.random.key(0), config)

        prompts = jax.ShapeDtypeStruct((2, 6), jnp.int32)
        mask = jax.ShapeDtypeStruct((2, 6), bool)
        return jax.jit(run).lower(state, prompts, mask).as_text().count("stablehlo.while")

    unrolled = loops(False, True)
    assert unrolled >= 2  # the two decode segments
    assert loops(True, True) == unrolled
    assert loops(True, False) == unrolled + (1 + 2) * len(
        MOE.replace(scan_layers=True).layer_groups()
    )


def test_scanned_routing_bias_update_equals_unrolled(tmp_path):
    plain, scanned = _pair(MOE, tmp_path)
    tokens = _tokens()
    stats = nnx.jit(lambda m, t: m.forward(t).moe)(plain, tokens)
    update_model_routing_biases(plain, stats, 0.1)
    update_model_routing_biases(scanned, stats, 0.1)
    stack = scanned.layers[1].layer.mlp.e_score_correction_bias[...]
    for j in range(3):
        want = plain.layers[2 + j].mlp.e_score_correction_bias[...]
        np.testing.assert_array_equal(stack[j], want)
        assert np.any(np.asarray(want) != 0)
    with pytest.raises(ValueError, match="MoE layers"):
        update_model_routing_biases(scanned, stats * 2, 0.1)


def test_scanned_params_shard_by_the_rules_and_run_on_the_mesh(devices, tmp_path):
    plain, _ = _pair(MOE, tmp_path)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=2, expert=2, tensor=2))
    _, scanned = hf.load(str(tmp_path), mesh=mesh, scan_layers=True)
    w_up = scanned.layers[1].layer.mlp.w_up[...]
    assert w_up.shape[0] == 3
    assert w_up.sharding.spec[0] is None  # the layers axis is never split
    assert w_up.sharding.spec[1:] == plain_spec(plain.layers[2].mlp.w_up, mesh)[:]
    tokens = _tokens((4, 9))
    with sharding.use_mesh(mesh):
        got = jax.jit(lambda m, t: m(t))(scanned, tokens)
    np.testing.assert_allclose(got, plain(tokens), atol=2e-5)
    # The sampler splits the sharded stacks inside its program and decodes what the unrolled
    # model decodes on one device.
    prompts = _tokens((4, 6), seed=5)
    prompt_mask = jnp.ones(prompts.shape, bool)
    config = SamplingConfig(max_new_tokens=5, greedy=True)
    graphdef, state = nnx.split(scanned)
    out = make_sampler(graphdef, config, mesh)(state, prompts, prompt_mask, jax.random.key(0))
    want = _sample(plain, prompts, prompt_mask, jax.random.key(0), config)
    np.testing.assert_array_equal(out.tokens, want.tokens)
    np.testing.assert_allclose(out.logprobs, want.logprobs, atol=1e-4)


def plain_spec(variable, mesh):
    value = variable[...]
    return tuple(sharding.named_sharding(sharding.variable_axes(variable), value.shape, mesh).spec)


def test_hf_round_trip_from_scanned(tmp_path):
    _, scanned = _pair(MOE, tmp_path / "a")
    hf.save(scanned, path=str(tmp_path / "b"))
    _, back = hf.load(str(tmp_path / "b"))
    assert not back.config.scan_layers
    tokens = _tokens()
    logits = nnx.jit(lambda m, t: m(t))
    np.testing.assert_allclose(logits(back, tokens), logits(scanned, tokens), atol=2e-5)


def test_scanned_program_size_does_not_grow_with_depth():
    """The point of scanning: the lowered program of a 12-layer model is no bigger than that
    of a 4-layer one (the unrolled one grows with every layer)."""

    def size(num_layers: int, scan: bool) -> int:
        cfg = MOE.replace(num_layers=num_layers, scan_layers=scan)
        model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
        graphdef, state = nnx.split(model)

        def forward(state, tokens):
            return nnx.merge(graphdef, state)(tokens)

        tokens = jax.ShapeDtypeStruct((2, 8), jnp.int32)
        return len(jax.jit(forward).lower(state, tokens).as_text())

    assert size(12, True) < 1.05 * size(4, True)
    assert size(12, False) > 2 * size(4, False)
