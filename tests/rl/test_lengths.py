"""Length-bucketed training (`rl.length_buckets`, r1.rl.lengths): rows ordered by length into
micro-batches, each at the narrowest width holding its longest row, the same update."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from r1 import sharding, testing
from r1.models.transformer import Transformer
from r1.rl.config import RLSection
from r1.rl.grpo import GRPOLossConfig
from r1.rl.lengths import (
    at_width,
    bucket_widths,
    bucketed_logprobs,
    narrow,
    sorted_layout,
    take_rows,
    width_index,
)
from r1.rl.step import (
    GRPOConfig,
    _full_sequences,
    completion_logprobs,
    grpo_step_fn,
    make_grpo_step,
)
from r1.sampling.sampler import SamplingConfig, left_pad
from r1.train.state import init_train_state, interleaved_rows
from tests.rl.test_grpo_step import token_reward

NEW = 24
# 16 rows (4 prompts x G 4), lengths spread over the widths 8 / 16 / 24 of three buckets.
LENGTHS = [3, 24, 1, 7, 9, 2, 16, 5, 12, 4, 8, 17, 6, 1, 10, 2]


def test_widths_and_index():
    assert bucket_widths(24, 3) == (8, 16, 24)
    assert bucket_widths(100, 4) == (32, 56, 80, 100)  # multiples of 8, capped at N
    assert bucket_widths(5, 4) == (5,) and bucket_widths(24, 0) == (24,)
    widths = (8, 16, 24)
    got = [int(width_index(jnp.int32(n), widths)) for n in (0, 1, 8, 9, 16, 17, 24, 30)]
    assert got == [0, 0, 0, 1, 1, 2, 2, 2]
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        bucket_widths(0, 2)


@pytest.mark.parametrize("slices", [1, 2, 4, 8])
def test_sorted_layout_puts_length_ranks_into_interleaved_slices(slices):
    lengths = jnp.asarray(LENGTHS, jnp.int32)
    layout = sorted_layout(lengths, slices)
    assert sorted(np.asarray(layout).tolist()) == list(range(16))  # a permutation
    arranged = jnp.take(lengths, layout)
    ranked = np.sort(np.asarray(LENGTHS), kind="stable")
    per = 16 // slices
    for s in range(slices):
        got = np.sort(np.asarray(interleaved_rows(arranged, s, slices)))
        np.testing.assert_array_equal(got, ranked[s * per : (s + 1) * per])
    with pytest.raises(ValueError, match="16 rows do not split into 3 slices"):
        sorted_layout(lengths, 3)


def test_at_width_picks_the_narrowest_holding_the_longest_row():
    batch = {
        "tokens": jnp.zeros((2, 4 + NEW), jnp.int32),
        "completion": jnp.zeros((2, NEW), jnp.int32),
        "completion_mask": jnp.arange(NEW)[None, :] < jnp.asarray([[3], [9]]),
        "advantages": jnp.ones((2,)),
    }

    def seen(b):
        return jnp.asarray([b["tokens"].shape[1], b["completion"].shape[1]])

    assert at_width(seen, batch, 4, (8, 16, 24)).tolist() == [20, 16]
    assert jax.jit(lambda b: at_width(seen, b, 4, (8, 16, 24)))(batch).tolist() == [20, 16]
    with pytest.raises(ValueError, match="'scores' is in none"):
        narrow({**batch, "scores": jnp.zeros((2, 28))}, 4, 8)
    assert narrow({**batch, "routes": jnp.zeros((2, 28, 3, 2))}, 4, 8)["routes"].shape[1] == 12
    assert take_rows(batch, jnp.asarray([1, 0]))["completion_mask"][0].sum() == 9


@pytest.mark.parametrize("make_config", [testing.tiny_dense_config, testing.tiny_moe_config])
def test_bucketed_logprobs_equal_the_full_width_forward(make_config):
    cfg = make_config()
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    prompts, mask = left_pad([[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]], 4, 0)
    completion = jnp.asarray(rng.integers(3, cfg.vocab_size, (16, NEW)), jnp.int32)
    completion_mask = jnp.arange(NEW)[None, :] < jnp.asarray(LENGTHS)[:, None]
    tokens, full_mask, positions = _full_sequences(
        jnp.asarray(prompts), jnp.asarray(mask), completion, completion_mask, 4
    )
    batch = {
        "tokens": tokens,
        "mask": full_mask,
        "positions": positions,
        "completion": completion,
        "completion_mask": completion_mask,
    }

    def logprobs(b):
        return completion_logprobs(
            model, b["tokens"], b["mask"], b["positions"], 4, b["completion"]
        )[0]

    full = np.where(completion_mask, logprobs(batch), 0.0)
    for slices in (2, 4):
        bucketed = jax.jit(lambda b, n=slices: bucketed_logprobs(logprobs, b, 4, (8, 16, 24), n))
        got = np.where(completion_mask, bucketed(batch), 0.0)
        np.testing.assert_allclose(got, full, atol=1e-5)


def _config(buckets, micro, minibatches=2):
    sampling = SamplingConfig(
        max_new_tokens=NEW, num_samples=4, temperature=1.0, eos_ids=(1,), pad_id=0
    )
    return GRPOConfig(
        group_size=4,
        sampling=sampling,
        loss=GRPOLossConfig(beta=0.05, eps_low=0.2, eps_high=0.2, aggregation="token_mean"),
        num_minibatches=minibatches,
        num_microbatches=micro,
        accuracy_reward="exact",
        length_buckets=buckets,
    )


# Sums over rows (or batch-wide), the same however rows are sliced; the others are per-slice
# means averaged over the slices.
SLICE_INVARIANT = ("loss", "loss/policy", "loss/kl", "valid_token_frac", "grad_norm")


def test_bucketed_step_gives_the_update_of_the_full_width_step(devices):
    """length_buckets=3 with 4 micro-batches: the same parameters (SGD: the update is the
    gradient) and loss metrics as without buckets, one program, and the same on the 8-device
    mesh with 2 micro-batches (length-ranked rows interleaved over the sharded rows); the
    completions are the forced long-tail lengths."""
    cfg = testing.tiny_dense_config()
    optimizer = optax.sgd(0.5)
    graphdef, state = init_train_state(
        Transformer(cfg, rngs=nnx.Rngs(0)), optimizer, seed=0, with_reference=True
    )
    prompts, mask = left_pad([[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]], 4, 0)
    batch = {
        "prompt_tokens": jnp.asarray(prompts),
        "prompt_mask": jnp.asarray(mask),
        "first": jnp.asarray([7, 3, 7, 4], jnp.int32),
        "forced_lengths": jnp.asarray(LENGTHS, jnp.int32),
    }
    results = {}
    for buckets in (0, 3):
        step = jax.jit(grpo_step_fn(graphdef, optimizer, _config(buckets, 4), token_reward))
        if buckets:
            assert step.lower(state, batch).as_text().count("func.func public @main") == 1
        new_state, metrics, samples = step(state, batch)
        results[buckets] = (new_state.params, metrics)
        np.testing.assert_array_equal(np.asarray(samples["mask"]).sum(axis=1), LENGTHS)
    for a, b in zip(jax.tree.leaves(results[0][0]), jax.tree.leaves(results[3][0])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)
    for key in SLICE_INVARIANT:
        np.testing.assert_allclose(
            float(results[3][1][key]), float(results[0][1][key]), rtol=1e-5, atol=1e-6, err_msg=key
        )
    moved = max(
        float(np.abs(np.asarray(a) - np.asarray(b)).max())
        for a, b in zip(jax.tree.leaves(results[3][0]), jax.tree.leaves(state.params))
    )
    assert moved > 1e-4  # the update is not trivially zero

    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, expert=2))
    config = _config(3, 2)
    sharded = make_grpo_step(graphdef, optimizer, config, token_reward, mesh, state, batch)
    with sharding.use_mesh(mesh):
        mesh_state, mesh_metrics, _ = sharded(state, batch)
    for a, b in zip(jax.tree.leaves(results[0][0]), jax.tree.leaves(mesh_state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=5e-5)
    for key in SLICE_INVARIANT:
        np.testing.assert_allclose(
            float(mesh_metrics[key]), float(results[0][1][key]), rtol=1e-4, err_msg=key
        )


def test_length_buckets_config_error():
    with pytest.raises(ValueError, match=r"config\.rl\.length_buckets: expected >= 0"):
        RLSection(length_buckets=-1)
    assert dataclasses.replace(_config(0, 1), length_buckets=4).length_buckets == 4
