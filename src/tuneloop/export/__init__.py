"""Export and compression: merge a LoRA, quantize, prune, export to ONNX — each measured.

`pipeline.run_export` chains the steps (merge first) and returns an `ExportReport` whose numbers
(size on disk, load time, latency, quality) were measured before and after in the same run.
"""
