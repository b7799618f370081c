"""`SamplingConfig.gather_weights`: the fsdp shards of the weights gathered once per rollout give
the same samples as gathering them every decode step, and the decode loop holds no all-gather."""

import jax
import numpy as np
from flax import nnx

from r1 import sharding, testing
from r1.aot.loops import count_loops, parse_computations
from r1.models.transformer import Transformer
from r1.sampling import SamplingConfig
from r1.sampling.sampler import left_pad, make_sampler


def test_gathered_weights_sample_the_same_and_leave_the_decode_loop_without_gathers(devices):
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=4), devices)
    graphdef, state = nnx.split(Transformer(testing.tiny_dense_config(), rngs=nnx.Rngs(0)))
    with sharding.use_mesh(mesh):
        state = sharding.place_state(state, mesh)
    tokens, mask = (np.asarray(a) for a in left_pad([[5, 6, 7], [8, 9], [10]] * 3 + [[4]], 8, 0))
    out, texts = {}, {}
    for gather in (False, True):
        config = SamplingConfig(max_new_tokens=6, num_samples=2, gather_weights=gather)
        fn = make_sampler(graphdef, config, mesh)
        out[gather] = fn(state, tokens, mask, jax.random.key(1))
        with sharding.use_mesh(mesh):
            texts[gather] = fn.lower(state, tokens, mask, jax.random.key(1)).compile().as_text()
    np.testing.assert_array_equal(out[True].tokens, out[False].tokens)
    np.testing.assert_allclose(out[True].logprobs, out[False].logprobs, atol=1e-5)

    def gathers_in_decode(text):
        (decode,) = [loop for loop in count_loops(text).loops if loop.is_decode]
        _, comps = parse_computations(text)
        return sum(" all-gather" in line for line in comps[decode.body].lines)

    assert gathers_in_decode(texts[False]) > 0
    assert gathers_in_decode(texts[True]) == 0
