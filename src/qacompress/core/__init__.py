"""Layer 0, imports nothing of qacompress: user errors, crash-safe writes, on-disk names, the CPU, NNCF's kernels and timing."""
