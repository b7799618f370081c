"""Reinforcement learning for r1: GRPO math (`r1.rl.grpo`), the compiled step and the trainer."""
