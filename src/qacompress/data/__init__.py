"""Layer 1 (imports core): SQuAD-style records, run_qa's data flags, model features, answer decoding,
EM/F1 and their intervals."""
