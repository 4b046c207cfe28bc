"""Layer 4 (imports the layers below): the compression methods on torch models (quantization, word
table, movement, distillation, Fisher selection, re-fit, latency tables), their settings and
checkpoints, and writing a finished model folder."""
