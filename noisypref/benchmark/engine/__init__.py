"""The training engine: tokenisation, packed log-probs, reference log-probs, models, the training loop, processes."""
