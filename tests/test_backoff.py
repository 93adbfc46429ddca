"""
The one backoff rule (L{mxrecv.backoff}).
"""

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mxrecv.backoff import backoff

waits = st.floats(min_value=0.001, max_value=3600, allow_nan=False)


class BackoffTests(SynchronousTestCase):
    def test_doubling(self):
        self.assertEqual([backoff(n, 1.0, 8.0) for n in range(1, 7)], [1, 2, 4, 8, 8, 8])
        self.assertEqual(backoff(10_000, 5.0, 600.0), 600.0)

    @given(st.integers(min_value=1, max_value=100_000), waits, waits)
    def test_bounded(self, failures, initial, extra):
        """
        Never less than C{initial} nor more than C{maximum}, and never
        shorter after one more failure.
        """
        maximum = initial + extra
        wait = backoff(failures, initial, maximum)
        self.assertTrue(initial <= wait <= maximum)
        self.assertLessEqual(wait, backoff(failures + 1, initial, maximum))
