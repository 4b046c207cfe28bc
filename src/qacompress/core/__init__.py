"""Layer 0, imports nothing of qacompress above it: user errors, crash-safe writes, on-disk names, the CPU,
NNCF as a dependency, timing, and settings shared by configs, flags and the API."""
