"""`r1.sampling.decode_kernel`: the Pallas decode-attention kernel (interpreted on CPU) equals
the XLA form, alone, sharded over the mesh and inside the sampler, and compiles for TPU inside
the decode loop with the cache read once."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1 import sharding, testing
from r1.models.transformer import Transformer
from r1.sampling import SamplingConfig, decode_kernel
from r1.sampling.kv_cache import _decode_attention
from r1.sampling.sampler import left_pad, make_sampler


def _operands(b, kv, g, d, slots, dtype, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(keys[0], (b, kv, g, d), jnp.float32).astype(dtype)
    k = jax.random.normal(keys[1], (b, kv, d, slots), jnp.float32).astype(dtype)
    v = jax.random.normal(keys[2], (b, kv, slots, d), jnp.float32).astype(dtype)
    mask = jax.random.uniform(keys[3], (b, slots)) > 0.3
    mask = mask.at[:, :7].set(False).at[1, 129:].set(False)  # left padding; a short row
    return q, k, v, mask


@pytest.mark.parametrize(
    "dtype, slots, atol",
    [(jnp.float32, 256, 1e-6), (jnp.float32, 640, 1e-6), (jnp.bfloat16, 384, 2e-2)],
)
def test_kernel_equals_the_xla_decode_attention(dtype, slots, atol):
    """Several slot tiles (online softmax across them), masked slots, G = 3 heads per kv head."""
    q, k, v, mask = _operands(4, 2, 3, 16, slots, dtype)
    want = _decode_attention(q, k, v, mask, 0.3)
    got = decode_kernel.decode_attention(q, k, v, mask, 0.3, interpret=True)
    assert got.dtype == v.dtype and got.shape == q.shape
    np.testing.assert_allclose(
        np.asarray(got, np.float32), np.asarray(want, np.float32), atol=atol, rtol=atol
    )


def test_kernel_with_masked_leading_tiles_and_an_empty_row():
    """Left padding over two whole tiles (the running max starts on masked slots and is wiped
    when real keys come) and a row with no valid slot (a uniform average, as the XLA form)."""
    q, k, v, mask = _operands(3, 1, 2, 16, 640, jnp.float32, seed=2)
    mask = mask.at[:, :300].set(False).at[2].set(False)
    want = _decode_attention(q, k, v, mask, 0.5)
    got = decode_kernel.decode_attention(q, k, v, mask, 0.5, interpret=True)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6, rtol=1e-6)


def test_kernel_sharded_over_the_mesh_equals_unsharded(devices):
    """Rows over data x fsdp, kv heads over tensor: the shard_map gives the unsharded result."""
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, tensor=2), devices)
    q, k, v, mask = _operands(8, 2, 2, 16, 128, jnp.float32, seed=1)
    want = decode_kernel.decode_attention(q, k, v, mask, 0.25, interpret=True)
    with sharding.use_mesh(mesh):
        got = jax.jit(lambda *a: decode_kernel.decode_attention(*a, 0.25, interpret=True))(
            q, k, v, mask
        )
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)


def test_slot_counts_the_kernel_does_not_tile_raise():
    assert decode_kernel.slot_tile(1024) == 512 and decode_kernel.slot_tile(384) == 384
    assert decode_kernel.slot_tile(640) == 128 and decode_kernel.slot_tile(200) == 0
    q, k, v, mask = _operands(1, 1, 1, 8, 200, jnp.float32)
    with pytest.raises(ValueError, match="200 cache slots"):
        decode_kernel.decode_attention(q, k, v, mask, 1.0, interpret=True)


def test_sampler_with_the_kernel_samples_what_xla_samples(devices, monkeypatch):
    """A tiny model with attention_impl='pallas' on a data x fsdp mesh (prefill: splash;
    decode windows of 128 and 256 slots: this kernel; of 192: the XLA form) samples the same
    tokens and log-probs as with 'xla'."""
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=4), devices)
    tokens, mask = (np.asarray(a) for a in left_pad([[5, 6, 7], [8, 9], [10]] * 3 + [[4]], 64, 0))
    config = SamplingConfig(max_new_tokens=192, num_samples=2, decode_segments=3, top_k=20)
    calls = []
    kernel = decode_kernel.decode_attention
    monkeypatch.setattr(
        decode_kernel, "decode_attention", lambda *a, **k: calls.append(1) or kernel(*a, **k)
    )
    out = {}
    for impl in ("xla", "pallas"):
        cfg = testing.tiny_dense_config().replace(attention_impl=impl)
        graphdef, state = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
        with sharding.use_mesh(mesh):
            state = sharding.place_state(state, mesh)
        out[impl] = make_sampler(graphdef, config, mesh)(state, tokens, mask, jax.random.key(3))
    assert calls  # traced into the pallas sampler's decode (the windows of 128 and 256 slots)
    np.testing.assert_array_equal(out["pallas"].tokens, out["xla"].tokens)
    np.testing.assert_allclose(out["pallas"].logprobs, out["xla"].logprobs, atol=1e-4)


def test_decode_loop_compiled_for_tpu_runs_the_kernel_and_reads_less():
    """The tiny GRPO config's rollout compiled for v5e:2x2 with attention_impl='pallas': each
    decode loop runs the kernel for its layer, and a decode step counts fewer HBM bytes than
    with the XLA form (which writes float32 scores and reads them back for the softmax)."""
    pytest.importorskip("libtpu", reason="needs the tpu extra: pip install -e .[tpu]")
    from r1 import aot, configlib
    from r1.aot.loops import parse_computations

    step_bytes = {}
    for impl in ("xla", "pallas"):
        config = configlib.load_config("configs/r1_zero.py:tiny")
        config.model.update(
            {
                **configlib.load_config("configs/models.py:qwen2_tiny").model.to_dict(),
                "attention_impl": impl,
                "num_layers": 1,
                "head_dim": 128,
                "dtype": "bfloat16",
            }
        )
        # 1,024 rows: each device's cache (50 MB a layer) lives in HBM, not in VMEM.
        config.rl.update(
            prompts_per_step=128, group_size=8, max_new_tokens=256, decode_segments=2
        )  # windows of 256, 384 slots
        config.data.buckets = (128,)
        mesh = aot.build_mesh(config, aot.topology_devices("v5e:2x2"))
        program = aot.grpo_program(config, mesh)
        text = aot.rollout_hlo(program)
        count = aot.count_loops(text)
        decode = [loop for loop in count.loops if loop.is_decode]
        assert len(decode) == 2
        _, comps = parse_computations(text)
        kernels = [
            sum(
                decode_kernel.KERNEL_NAME in line and "tpu_custom_call" in line
                for line in comps[loop.body].lines
            )
            for loop in decode
        ]
        assert kernels == ([1, 1] if impl == "pallas" else [0, 0])
        step_bytes[impl] = count.decode_step.bytes
    assert step_bytes["pallas"] < step_bytes["xla"]
