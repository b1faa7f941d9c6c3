"""Fixture plugins shared by every test folder (keep this file to plugin registration).

Helpers that tests share live in these modules and are imported from there only: never
from a test module or a conftest (tests/unit/test_test_hygiene.py checks).
"""

pytest_plugins = [
    "tests.fixtures.api",
    "tests.fixtures.audit",
    "tests.fixtures.otlp",
    "tests.fixtures.pg",
    "tests.fixtures.serve",
    "tests.fixtures.stack",
]
