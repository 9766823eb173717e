"""For the planted-bug tests of the fuzz targets: a property test run against a bug
planted with monkeypatch must fail on a property, not crash."""
from __future__ import annotations

from collections.abc import Callable

import pytest


def assert_caught(property_test: Callable[[], None]) -> None:
    """Run a hypothesis property test and require it to fail with AssertionError (alone, or
    several distinct ones that hypothesis reports together)."""
    with pytest.raises((AssertionError, ExceptionGroup)) as caught:
        property_test()
    failure = caught.value
    failures = failure.exceptions if isinstance(failure, ExceptionGroup) else (failure,)
    assert all(isinstance(f, AssertionError) for f in failures), failures
