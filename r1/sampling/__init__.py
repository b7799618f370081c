"""JAX-native sampling: KV cache, filters, the compiled prefill + decode loop."""

from r1.sampling.filters import apply_filters, min_p_filter, top_k_filter, top_p_filter
from r1.sampling.kv_cache import cache_bytes_per_token, forward_with_cache, init_cache
from r1.sampling.sampler import SampleOutput, SamplingConfig, generate, make_sampler, sample

__all__ = [
    "SampleOutput",
    "SamplingConfig",
    "apply_filters",
    "cache_bytes_per_token",
    "forward_with_cache",
    "generate",
    "init_cache",
    "make_sampler",
    "min_p_filter",
    "sample",
    "top_k_filter",
    "top_p_filter",
]
