"""Solvers: they take residuals, rules and bounds, and know nothing of files or the CLI."""
