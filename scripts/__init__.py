"""Maintenance scripts of the repository; run them from its root: python -m scripts.NAME."""
