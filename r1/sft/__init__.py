"""Supervised fine-tuning: loss-masked, packed batches (`data`), the compiled step with gradient
accumulation (`step`) and the resumable trainer (`trainer.train_sft`)."""
