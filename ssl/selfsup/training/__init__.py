"""Training plumbing shared by all tasks: optimizers, schedules, checkpoints, the Trainer."""
