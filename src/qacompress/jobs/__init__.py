"""Layer 8: the jobs end to end (train, prune, compress): data, models, compression, training, export,
scores and reports, as the commands and the Python API run them."""
