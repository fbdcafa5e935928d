"""
FANGS benchmarks (C{make bench}, C{python -m benchmarks [NAME ...]}): every
figure printed next to a reference measured in the same run, as a ratio.
Nothing here is a pass/fail test, and none of it ships in the wheel; it runs
from the repository's root (some benchmarks borrow the tests' helpers:
L{tests.pg}, L{tests.orchestrator.fakeregistry}).
"""
