"""LoRA targets, the loss, and the training loop."""
