"""The models: one configurable decoder (`Transformer`) for DeepSeek-V3 (MLA, DeepSeekMoE with
aux-free balancing, MTP), Qwen2 and Llama, with Hugging Face checkpoint I/O.

    from r1 import models
    cfg, model = models.hf.load("path/to/checkpoint")       # HF layout, sharded by the rules
    out = model.forward(tokens, positions=pos, attention_mask=mask)
    out.logits, out.moe                                       # RoutingStats per MoE layer

See docs/models.md.
"""

from r1.models import hf
from r1.models.config import ModelConfig, RopeScaling
from r1.models.moe import MoE, RoutingStats, load_diagnostics, total_balance_loss
from r1.models.transformer import ModelOutput, Transformer, unstack_layers

__all__ = [
    "MoE",
    "ModelConfig",
    "ModelOutput",
    "RopeScaling",
    "RoutingStats",
    "Transformer",
    "hf",
    "load_diagnostics",
    "total_balance_loss",
    "unstack_layers",
]
