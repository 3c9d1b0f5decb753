"""Generation, metrics and base-vs-tuned comparison."""
