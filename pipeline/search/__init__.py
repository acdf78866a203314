"""Compression to a budget: `slimpipe compress --recipe auto --max-drop 0.5 --objective size`.

A driver above the runner (`pipeline.search.driver`): it builds recipes as data, runs them
through the same runner and cache, and reads their reports. See `driver.run_search`.
"""
