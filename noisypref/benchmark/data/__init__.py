"""Preference data in: loaders for the public layouts (hub id or local file) and the held-out split.

    from noisypref.benchmark.data import load_preferences, split_heldout, write_preferences
    pairs = load_preferences("data/pairs.jsonl")          # or a hub id; pair_id, prompt, chosen, rejected
    train, heldout = split_heldout(pairs, 0.1, seed=0)

The public names (docs/api.md) are imported here, so that they stay where they are when a module moves.
"""

from noisypref.benchmark.data.loaders import load_preferences, split_heldout, write_preferences

__all__ = ["load_preferences", "split_heldout", "write_preferences"]
