"""specialize: turn an open LLM into a domain specialist from one config file."""

__version__ = "0.1.0"
