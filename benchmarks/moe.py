"""MoE cost versus the number of routed experts at fixed width, top-k and tokens.

Compiles (does not run) the forward pass of one DeepSeekMoE layer for 8, 64 and 256 experts on
the local backend and prints XLA's FLOP count and memory analysis. With sorted, dropless dispatch
the FLOPs grow with experts-per-token (and, through the router only, slightly with the number of
experts); a dense tokens x experts x hidden formulation would grow ~32x from 8 to 256 experts.

For contrast it also compiles the other grouped-matmul implementation: on CPU that is
`jax.lax.ragged_dot`, which JAX lowers densely there (masking rows into [experts, rows, hidden]).

Run: python benchmarks/moe.py   (CPU: ~10 s; the last line is `moe_flops_ratio_256_vs_8: R`).
"""

from __future__ import annotations

import pathlib
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from anywhere
from r1.models.moe import MoE, resolve_gmm_impl  # noqa: E402
from r1.testing import tiny_moe_config  # noqa: E402

HIDDEN, MOE_INTERMEDIATE, TOP_K, BATCH, LENGTH = 256, 128, 8, 4, 256


def compile_layer(n_experts: int, gmm_impl: str = "auto"):
    cfg = tiny_moe_config(
        hidden_size=HIDDEN,
        moe_intermediate_size=MOE_INTERMEDIATE,
        n_routed_experts=n_experts,
        num_experts_per_tok=TOP_K,
        n_group=8,
        topk_group=4,
        n_shared_experts=1,
    )
    abstract = nnx.eval_shape(lambda: MoE(cfg, nnx.Rngs(0), gmm_impl=gmm_impl))
    graphdef, state = nnx.split(abstract)
    x = jax.ShapeDtypeStruct((BATCH, LENGTH, HIDDEN), jnp.float32)
    mask = jax.ShapeDtypeStruct((BATCH, LENGTH), jnp.bool_)
    fwd = jax.jit(lambda s, x, m: nnx.merge(graphdef, s)(x, m)[0])
    return fwd.lower(state, x, mask).compile()


def main() -> None:
    tokens = BATCH * LENGTH
    print(
        f"backend={jax.default_backend()} grouped-matmul={resolve_gmm_impl('auto')} "
        f"tokens={tokens} hidden={HIDDEN} moe_intermediate={MOE_INTERMEDIATE} top_k={TOP_K}"
    )
    auto = resolve_gmm_impl("auto")
    other = "ragged_dot" if auto == "blocked" else "blocked"
    ideal_expert = 2 * 3 * tokens * (TOP_K + 1) * HIDDEN * MOE_INTERMEDIATE  # routed + shared
    flops = {}
    for n_experts in (8, 64, 256):
        start = time.perf_counter()
        compiled = compile_layer(n_experts)
        seconds = time.perf_counter() - start
        flops[n_experts] = compiled.cost_analysis()["flops"]
        mem = compiled.memory_analysis()
        router = 2 * tokens * HIDDEN * n_experts
        print(
            f"experts={n_experts:4d} flops={flops[n_experts] / 1e9:7.3f} G "
            f"(ideal experts+router {(ideal_expert + router) / 1e9:6.3f} G) "
            f"temp={mem.temp_size_in_bytes / 2**20:7.1f} MiB "
            f"args={mem.argument_size_in_bytes / 2**20:6.1f} MiB "
            f"dense_txExD={tokens * n_experts * HIDDEN * 4 / 2**20:7.1f} MiB "
            f"compile={seconds:4.1f}s"
        )
        alt = compile_layer(n_experts, other)
        print(
            f"    for contrast, impl={other}: flops={alt.cost_analysis()['flops'] / 1e9:7.3f} G "
            f"temp={alt.memory_analysis().temp_size_in_bytes / 2**20:7.1f} MiB"
        )
    print(f"moe_flops_ratio_256_vs_8: {flops[256] / flops[8]:.3f}")


if __name__ == "__main__":
    main()
