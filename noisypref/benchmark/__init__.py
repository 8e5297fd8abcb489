"""Data loading, models, the training engine, evaluation and studies."""
