"""Processing stages: pure functions plus thin stage objects that adapt Ray Data batches."""
