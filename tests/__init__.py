"""Aegis's tests; tests/harness/ holds what they share."""

import pytest

# The harness helpers assert; let pytest explain a failing one as it does in a test module.
pytest.register_assert_rewrite("tests.harness")
