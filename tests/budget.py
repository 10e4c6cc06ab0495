"""Example counts of the property tests.  A test with a count of its own (a slow one: kernels in
Triton's interpreter; or a cheap one that runs more) writes it for the default profile ("ci",
25 examples a test) as ``scaled(n)``; ``HYPOTHESIS_PROFILE=thorough`` (500) multiplies every
such count by 20, as it does the profile's own."""
from hypothesis import settings


def scaled(n: int) -> int:
    return n * max(1, settings.default.max_examples // 25)
