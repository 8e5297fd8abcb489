"""Preference data in: loaders for the public layouts (hub id or local file) and the held-out split."""
