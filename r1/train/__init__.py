"""The shared training core under every trainer (GRPO, SFT, reward model).

* `r1.train.state`: `TrainState` (init, abstract, shardings), `accumulate_grads` (the one
  gradient accumulation: interleaved slices, float32 sums), `optimizer_step`,
  `update_routing_biases`, `apply_update`.
* `r1.train.loop`: `run_loop(workdir, state, shardings, LoopSettings, LoopHooks)`, the one
  training loop: restore (state + data position), SIGTERM, the non-finite stop, checkpoints,
  metrics (fetched asynchronously), evaluation, curves.
* `r1.train.config`: the sections every trainer shares (init, tokenizer, optimizer, train) and
  `make_optimizer`.
* `r1.train.build`: tokenizer, policy and mesh from those sections (`start_policy`).
* `r1.train.heldout`: the held-out evaluator of procedural tasks.
* `r1.train.export`: the model in Hugging Face layout. `r1.train.distributed`: multi-host
  batches and gathers.

A trainer supplies its step and host hooks; see docs/models.md, "The training core".
"""
