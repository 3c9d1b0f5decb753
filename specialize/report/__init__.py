"""Model card, plots and the run manifest, all written from the run's own files."""
