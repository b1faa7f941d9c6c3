"""Fixture plugins shared by every test folder (keep this file to plugin registration)."""

pytest_plugins = ["tests.fixtures.pg"]
