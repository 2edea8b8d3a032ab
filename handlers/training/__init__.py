"""Helpers of `poll` and `report`: the fine-tune's training events, their loss figures and the training curve."""
