"""One run end to end: data, noise, training and evaluation of one run config, into its run folder.

The public name (docs/api.md), ``execute_run``, is imported here, so that it stays where it is when a
module moves.
"""

from noisypref.benchmark.run.execute import execute_run

__all__ = ["execute_run"]
