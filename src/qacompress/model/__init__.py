"""Layer 2 (imports core, data): loading torch QA models and tokenizers, where heads and neurons live,
NNCF scope names, physical removal of heads and neurons."""
