"""Evaluation: perplexity, generated answers scored against references, side-by-side comparison.

`harness.evaluate(model_ref, data)` is the entry point; `perplexity.sft_labels` is the one
implementation of assistant-only loss masking, shared with training.
"""
