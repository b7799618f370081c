"""Routing capture while sampling (`SamplingConfig.record_routes`): the experts recorded for every
token fed to the model equal those a full forward pass over prompt + completion picks, in the
static and the slot decode, with separate and scanned layers; the samples do not change."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1 import sharding, testing
from r1.models.transformer import Transformer
from r1.sampling import SamplingConfig
from r1.sampling.kv_cache import forward_with_cache, init_cache
from r1.sampling.sampler import left_pad, make_sampler

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18]]
PROMPT_LEN = 8
GROUP = 2  # 6 rows
NEW = 6
EOS = 1
# Forced ends at varied token counts (7 > NEW: truncated rows).
FORCED = np.asarray([3, 7, 1, 5, 2, 7], np.int32)


def _config(greedy: bool, **changes) -> SamplingConfig:
    settings = dict(
        max_new_tokens=NEW,
        num_samples=GROUP,
        greedy=greedy,
        temperature=1.0,
        eos_ids=(EOS,),
        decode_segments=1,
        record_routes=True,
    )
    return SamplingConfig(**{**settings, **changes})


@functools.cache
def _model(scan: bool):
    return nnx.split(Transformer(testing.tiny_moe_config(scan_layers=scan), rngs=nnx.Rngs(0)))


@functools.cache
def _sampler(config: SamplingConfig, scan: bool, on_mesh: bool):
    graphdef, state = _model(scan)
    if not on_mesh:
        return functools.partial(make_sampler(graphdef, config), state)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, expert=2))
    with sharding.use_mesh(mesh):
        state = sharding.place_state(state, mesh)
    return functools.partial(make_sampler(graphdef, config, mesh), state)


def _sample(config: SamplingConfig, scan: bool = False, seed: int = 3, on_mesh: bool = False):
    tokens, mask = left_pad(PROMPTS, PROMPT_LEN, 0)
    ids = np.arange(len(PROMPTS) * GROUP, dtype=np.int32)
    if not on_mesh:
        tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)
    return _sampler(config, scan, on_mesh)(tokens, mask, jax.random.key(seed), ids, FORCED)


@functools.cache
def _forward(scan: bool):
    graphdef, _ = _model(scan)

    @jax.jit
    def run(state, tokens, mask, positions):
        model = nnx.merge(graphdef, state)
        out = model.forward(tokens, positions=positions, attention_mask=mask, compute_logits=False)
        return jnp.stack([s.routes for s in out.moe], axis=2)  # [B, T, M, k]

    return run


def _expected(out, scan: bool):
    """(routes int32[B, L + N, M, k] of a full forward pass, bool[B, L + N]: the fed tokens),
    the sequences built as `r1.rl.step._full_sequences` does."""
    prompt_tokens, prompt_mask = left_pad(PROMPTS, PROMPT_LEN, 0)
    completion, completion_mask = np.asarray(out.tokens), np.asarray(out.mask)
    tokens = np.concatenate([np.repeat(prompt_tokens, GROUP, axis=0), completion], axis=1)
    mask = np.concatenate([np.repeat(prompt_mask, GROUP, axis=0), completion_mask], axis=1)
    positions = np.maximum(np.cumsum(mask.astype(np.int32), axis=1) - 1, 0).astype(np.int32)
    routes = _forward(scan)(_model(scan)[1], tokens, mask, positions)
    # Fed: real prompt tokens and completion tokens followed by another (not each row's last).
    next_mask = np.concatenate([completion_mask[:, 1:], np.zeros_like(completion_mask[:, :1])], 1)
    fed = np.concatenate([np.repeat(prompt_mask, GROUP, axis=0), next_mask], axis=1)
    return np.asarray(routes), fed


def _assert_routes_match_forward(out, scan: bool = False):
    cfg = testing.tiny_moe_config()
    rows = len(PROMPTS) * GROUP
    shape = (rows, PROMPT_LEN + NEW, cfg.num_moe_layers, cfg.num_experts_per_tok)
    assert out.routes is not None and out.routes.shape == shape
    assert out.routes.dtype == jnp.int16
    recorded = np.asarray(out.routes).astype(np.int32)
    expected, fed = _expected(out, scan)
    np.testing.assert_array_equal(np.sort(recorded[fed], -1), np.sort(expected[fed], -1))
    assert np.all(recorded[~fed] == -1)
    assert np.all((recorded[fed] >= 0) & (recorded[fed] < cfg.n_routed_experts))


def _assert_same_samples(out, ref, exact: bool = True):
    """Equal samples; log-probs bit for bit (exact) or up to float rounding of a different
    batching / sharding of the same arithmetic."""
    for name in ("tokens", "mask", "lengths", "truncated"):
        np.testing.assert_array_equal(
            np.asarray(getattr(out, name)), np.asarray(getattr(ref, name))
        )
    for name in ("logprobs", "sampling_logprobs"):
        got, want = np.asarray(getattr(out, name)), np.asarray(getattr(ref, name))
        if exact:
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, atol=1e-5)


def _assert_same_routes(out, ref):
    np.testing.assert_array_equal(np.sort(out.routes, -1), np.sort(ref.routes, -1))


@pytest.mark.parametrize("greedy", [True, False], ids=["greedy", "temperature"])
def test_static_decode_records_what_a_full_forward_routes(greedy):
    """Rows of varied lengths, some truncated, one ending at its first token (greedy: two
    decode segments, the cache growing between them)."""
    out = _sample(_config(greedy, decode_segments=2 if greedy else 1))
    assert len(set(np.asarray(out.lengths).tolist())) > 2 and np.any(np.asarray(out.truncated))
    _assert_routes_match_forward(out)


def test_recording_changes_no_sample():
    """Tokens and log-probs bit for bit with and without recording, in both decode loops."""
    for changes in (dict(greedy=True, decode_segments=2), dict(greedy=False, slots=3)):
        out = _sample(_config(**changes))
        plain = _sample(_config(**changes, record_routes=False))
        assert plain.routes is None and out.routes is not None
        _assert_same_samples(out, plain)


def test_slot_decode_records_what_the_static_decode_records():
    """3 slots for 6 rows: rows refill slots mid-loop, each writes its own row of routes."""
    out = _sample(_config(False, slots=3))
    ref = _sample(_config(False))
    _assert_same_samples(out, ref, exact=False)
    _assert_same_routes(out, ref)
    _assert_routes_match_forward(out)


def test_scanned_layers_record_routes():
    """Scanned blocks decoded as a `lax.scan` (unstack_layers=False; prefill and slot decode):
    routes are the scan's per-layer outputs, in forward order."""
    out = _sample(_config(False, slots=3, unstack_layers=False), scan=True)
    _assert_routes_match_forward(out, scan=True)


def test_slot_decode_records_routes_on_a_data_mesh(devices):
    """Rows split over an 8-device mesh: the same samples and routes as on one device."""
    config = _config(False, slots=3)
    out = _sample(config, on_mesh=True)
    ref = _sample(config)
    _assert_same_samples(out, ref, exact=False)
    _assert_same_routes(out, ref)


def test_forward_with_cache_returns_routes_only_when_asked():
    model = nnx.merge(*_model(False))
    cfg = model.config
    tokens, mask = left_pad(PROMPTS, PROMPT_LEN, 0)
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)

    def run(with_routes):
        cache = init_cache(cfg, len(PROMPTS), PROMPT_LEN)
        return forward_with_cache(model, tokens, positions, mask, cache, 0, with_routes=with_routes)

    assert len(jax.eval_shape(lambda: run(False))) == 2
    logits, _, routes = jax.eval_shape(lambda: run(True))
    assert logits.shape == (len(PROMPTS), PROMPT_LEN, cfg.vocab_size)
    assert routes.shape == (len(PROMPTS), PROMPT_LEN, cfg.num_moe_layers, cfg.num_experts_per_tok)
    assert routes.dtype == jnp.int32


def test_dense_model_with_record_routes_raises():
    dense = Transformer(testing.tiny_dense_config(), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(dense)
    tokens, mask = left_pad(PROMPTS, PROMPT_LEN, 0)
    fn = make_sampler(graphdef, _config(True))
    with pytest.raises(ValueError, match="record_routes"):
        fn(state, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0))
    cache = init_cache(dense.config, len(PROMPTS), PROMPT_LEN)
    with pytest.raises(ValueError, match="with_routes"):
        forward_with_cache(dense, tokens, np.zeros_like(tokens), mask, cache, 0, with_routes=True)


def test_record_routes_default_off():
    assert SamplingConfig().record_routes is False
    assert dataclasses.replace(_config(True), record_routes=False).record_routes is False
