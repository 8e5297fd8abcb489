"""Evaluation of a trained policy: the metrics and their declarations, generation, AlpacaEval and Arena-Hard."""
