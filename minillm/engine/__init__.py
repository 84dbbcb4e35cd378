"""The training engine: distributed start-up, DeepSpeed configuration, checkpoints and the loop."""
