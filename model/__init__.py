"""Network definitions of the research repository; run from the repository root, not installed."""
