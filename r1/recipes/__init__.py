"""Recipes built from the training core: the four-stage R1 pipeline (`pipeline`, with the stage
runners in `stages`) and distillation into dense students (`distill`, traces in
`distill_traces`)."""
