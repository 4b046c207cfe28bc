"""Layer 6: speed, memory and size side by side, the deployment variants of one model, and what
pruning did to it."""
