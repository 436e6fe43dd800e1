"""accel-harness: benchmark LLM inference on pluggable accelerator backends."""
__version__ = "0.1.0"
