"""Helpers shared by the scripts in ``tool/``; run from the repository root, not installed."""
