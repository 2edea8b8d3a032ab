"""Helpers of `evaluate`: the evaluation stories and their prompts per protocol, and scoring the answers exactly like
the official CoQA scorer."""
