"""Fixtures of the evaluation tests: the recording OpenAI-compatible server of tests/handlers/test_evaluate.py."""

from tests.handlers.test_evaluate import recorder  # noqa: F401 - re-exported as a fixture
