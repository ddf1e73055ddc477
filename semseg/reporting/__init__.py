"""The reporting stage: a run's results, studies of many runs, tables, plots and timings."""
