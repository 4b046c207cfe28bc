"""Layer 5: running a saved model (torch or IR) on features behind one call, SQuAD evaluation,
answering questions."""
