"""inferwatch's Grafana: dashboards as code, their linter, and what Grafana would send.

``grafana/boards/`` builds the dashboards with grafana-foundation-sdk; ``grafana/generate.py``
lints them (``grafana/lint.py``) and writes ``grafana/dashboards/*.json``, which Grafana
loads through ``grafana/provisioning/``. Nothing here talks to a Grafana server: none runs
on the machines that build and test this project (compose runs the official image).
"""
