"""Revisions, one file each; the baseline (0001) is the schema of breachwatch 0.1."""
