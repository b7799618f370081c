"""Reward models for R1's "RL for all scenarios" stage.

* `r1.rm.model`: `RewardModel`, an r1 `Transformer` backbone with a scalar head read at the last
  real token; HF-layout save/load (backbone directory + `reward_head.safetensors`).
* `r1.rm.loss`: the Bradley-Terry loss and pair accuracy (pure).
* `r1.rm.data`: JSONL preference pairs (`prompt`, `chosen`, `rejected`, optional `margin`),
  tokenisation with explicit masks, synthetic pairs with a learnable rule.
* `r1.rm.reward`: `score_sequences` and the region masks (helpfulness: final summary only;
  harmlessness: the whole response), jittable for use inside the compiled GRPO step.
* `r1.rm.trainer`: `train_rm(config, workdir)`.
"""
