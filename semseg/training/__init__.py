"""The training stage: an epoch and a validation, the optimizer, checkpoints, processes, logs, signals."""
