"""Continuous batching (`SamplingConfig.slots`): the same samples as the static decode, token for
token, and a decode-step count that follows the rows' lengths (list scheduling)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1 import sharding, testing
from r1.models.transformer import Transformer
from r1.sampling import SamplingConfig
from r1.sampling.sampler import left_pad, make_sampler
from r1.sampling.slots import expected_decode_steps

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18]]
GROUP = 4  # N = 12 rows
# Forced ends at varied token counts; 12 > max_new_tokens = 10, so those rows hit the limit.
FORCED = [3, 12, 1, 5, 12, 2, 7, 4, 6, 11, 2, 8]
EOS = 1
MODELS = {
    "dense_gqa": testing.tiny_dense_config,
    "moe_mla": testing.tiny_moe_config,
    "scanned": lambda: testing.tiny_dense_config(scan_layers=True),
}


def _sampler(name, config, mesh=None):
    graphdef, state = nnx.split(Transformer(MODELS[name](), rngs=nnx.Rngs(0)))
    tokens, mask = left_pad(PROMPTS, 8, 0)
    if mesh is not None:
        with sharding.use_mesh(mesh):
            state = sharding.place_state(state, mesh)
        tokens, mask = np.asarray(tokens), np.asarray(mask)
    fn = make_sampler(graphdef, config, mesh)

    def run(slots, seed=3, forced=FORCED):
        lengths = None if forced is None else np.asarray(forced, np.int32)
        key = jax.random.key(seed)
        ids = np.arange(len(PROMPTS) * GROUP, dtype=np.int32)
        if mesh is None:
            tokens_, mask_ = jnp.asarray(tokens), jnp.asarray(mask)
        else:
            tokens_, mask_ = tokens, mask
        sampler = (
            fn
            if slots == config.slots
            else make_sampler(graphdef, dataclasses.replace(config, slots=slots), mesh)
        )
        return sampler(state, tokens_, mask_, key, ids, lengths)

    return run


def _assert_same_samples(out, ref):
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref.tokens))
    np.testing.assert_array_equal(np.asarray(out.mask), np.asarray(ref.mask))
    np.testing.assert_array_equal(np.asarray(out.truncated), np.asarray(ref.truncated))
    np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5)
    np.testing.assert_allclose(out.sampling_logprobs, ref.sampling_logprobs, atol=1e-5)


def _config(greedy, **changes):
    # Three decode segments (static) / attention windows (slots): ends at 4, 7 and 10 tokens.
    settings = dict(
        max_new_tokens=10, num_samples=GROUP, greedy=greedy, eos_ids=(EOS,), decode_segments=3
    )
    return SamplingConfig(**{**settings, "top_p": 1.0 if greedy else 0.9, **changes})


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("greedy", [True, False], ids=["greedy", "top_p"])
def test_slots_sample_what_the_static_batch_samples(name, greedy):
    """S = 1, S < N with N not a multiple of S, S = N and S > N against the static decode:
    equal tokens, masks, truncation and log-probs, in exactly the scheduled decode steps."""
    run = _sampler(name, _config(greedy))
    ref = run(0)
    lengths = np.asarray(ref.lengths).tolist()
    assert lengths == [min(n, 10) for n in FORCED]
    assert np.asarray(ref.truncated).tolist() == [n > 10 for n in FORCED]
    assert int(ref.decode_steps) == 10
    for slots in (1, 5, 12, 20) if name == "dense_gqa" else (5,):
        out = run(slots)
        _assert_same_samples(out, ref)
        assert int(out.decode_steps) == expected_decode_steps(lengths, slots), slots


def test_natural_eos_and_stop_sequences_end_rows_in_their_slots():
    """Rows that end by the model's own EOS or by a two-token stop sequence (no forced lengths)
    end at the same token in a slot as in the static batch."""
    free = _sampler("dense_gqa", _config(False, eos_ids=()))(0, forced=None)
    tokens = np.asarray(free.tokens)
    eos, stop = int(tokens[1, 3]), (int(tokens[6, 1]), int(tokens[6, 2]))
    config = _config(False, eos_ids=(eos,), stop_sequences=(stop,))
    run = _sampler("dense_gqa", config)
    ref = run(0, forced=None)
    lengths = np.asarray(ref.lengths)
    assert lengths[1] <= 4 and lengths[6] <= 3 and lengths.max() == 10  # varied ends
    out = run(3, forced=None)
    _assert_same_samples(out, ref)
    assert int(out.decode_steps) == expected_decode_steps(lengths.tolist(), 3)


def test_slots_on_a_data_mesh_match_one_device(devices):
    config = _config(False, slots=5)
    one = _sampler("moe_mla", config)(5)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, expert=2))
    _assert_same_samples(_sampler("moe_mla", config, mesh)(5), one)


def test_expected_decode_steps_is_list_scheduling():
    assert expected_decode_steps([4, 1, 1, 1, 1], 2) == 4  # slot 2 serves the four short rows
    assert expected_decode_steps([1, 1, 1, 1, 4], 2) == 6  # the long row starts last
    assert expected_decode_steps([3, 3, 3], 1) == 9
    assert expected_decode_steps([3, 5, 2], 8) == 5


def test_slots_config_validation():
    with pytest.raises(ValueError, match="slots must be >= 0"):
        SamplingConfig(slots=-1)
    assert SamplingConfig(slots=0).decode_rows(12) == 12
    assert SamplingConfig(slots=5).decode_rows(12) == 5
    assert SamplingConfig(slots=50).decode_rows(12) == 12
