"""
WOW's trial test suite.

hypothesis runs with a deterministic profile so a CI failure reproduces.
"""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "wow",
    derandomize=True,
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("wow")
