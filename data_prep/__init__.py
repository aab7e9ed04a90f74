"""Corpus preparers: one script per dataset, shared helpers in common.py (see README.md)."""
