"""Diagnostics: pure functions and small estimators from arrays to xarray results.

No plotting and no model code here: pages draw what these return.
"""
