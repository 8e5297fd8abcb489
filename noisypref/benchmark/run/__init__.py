"""One run end to end: data, noise, training and evaluation of one run config, into its run folder."""
