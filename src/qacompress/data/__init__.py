"""Layer 1 (imports core): SQuAD-style records, model features, answer decoding, EM/F1 and their intervals."""
