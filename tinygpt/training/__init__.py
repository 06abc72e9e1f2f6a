"""Training: the Trainer and its config, optimizer, schedule, time budget, metrics, evaluation, DDP helpers."""
