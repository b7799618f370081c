"""The shared training core under every trainer (GRPO, SFT, reward model).

* `r1.train.state`: `TrainState` (init, abstract, shardings), `accumulate_grads` (one gradient
  accumulation), `apply_update` (optimizer step + MoE routing-bias update).
"""
