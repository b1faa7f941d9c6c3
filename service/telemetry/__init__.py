"""inferwatch.telemetry"""
