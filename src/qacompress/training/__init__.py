"""Layer 7: fine-tuning with compression through transformers' Trainer (public hooks only): its
arguments, phases and plans."""
