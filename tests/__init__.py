"""
mxrecv's tests, run by trial.

Hypothesis's timing checks are off for every test here: its deadline and
its "input generation is slow" health check judge elapsed time, which on
a machine shared by several test runs says nothing about the code (seen:
a strategy of three integers "too slow" at a load average of 20).  A test
must not pass or fail by how busy the machine is.
"""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "mxrecv", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("mxrecv")
