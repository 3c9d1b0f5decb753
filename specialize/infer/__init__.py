"""The inference layer: one request/result contract over local, GGUF and HTTP backends."""
