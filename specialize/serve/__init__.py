"""Serving what a run trained: the OpenAI-compatible app and the typed task API."""
