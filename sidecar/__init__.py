"""spec-sidecar: keeps vLLM speculative decoding honest."""

__version__ = "0.1.0"
