"""Helpers of `evaluate`: scoring answers exactly like the official CoQA scorer."""
