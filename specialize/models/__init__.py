"""Model loading and chat formats."""
