"""Reference Llama-family model (plain torch) and where its weights come from."""
from workloads.models.llama import Transformer, decode_step, full_forward, prefill, TORCH_DTYPES
from workloads.models.weights import build_model, reference_logits, CheckpointError

__all__ = ["Transformer", "decode_step", "full_forward", "prefill", "build_model", "reference_logits", "CheckpointError", "TORCH_DTYPES"]
