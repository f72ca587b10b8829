"""What a model is, read from its config: layers and their KV kinds, heads, sizes, dtype, quantization."""
