# -*- test-case-name: tests.test_backoff -*-
"""
Exponential backoff, pure: the one rule that RetrieveMMS attempts, MMS held up
by a local error, deliveries and worker restarts all wait by.
"""

from __future__ import annotations


def backoff(failures: int, initial: float, maximum: float) -> float:
    """
    The wait after the C{failures}th failure in a row (1 for the first):
    C{initial}, doubled after each further failure, up to C{maximum}.
    """
    return min(maximum, initial * 2.0 ** min(failures - 1, 64))
