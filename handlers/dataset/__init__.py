"""Helpers of `prepare` and `validate`: loading a dataset, mapping its rows to chat examples, JSONL I/O, the
validation rules and the counts."""
