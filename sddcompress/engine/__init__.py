"""Training engine: config, checkpoints, the Accelerate loop, evaluation and metrics."""
