"""Layer 3 (imports core, data, model): the one place that talks to OpenVINO: convert, weight
compression, dequantization, post-training quantization, compilation, running an IR."""
