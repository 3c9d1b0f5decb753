"""Merging adapters into the base model and (later) GGUF export."""
