"""Tools for development, tests and benchmarks; nothing here runs in a serving worker."""
