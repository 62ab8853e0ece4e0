"""Per-worker model cache, batched predictors, output schemas."""
