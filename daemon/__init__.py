"""finetuned: the fine-tune daemon (service core). Handlers live in the sibling package `handlers`."""

__version__ = "0.1.0"
