"""The one typed run configuration: settings sections, their checks and defaults, the run config and its id."""
