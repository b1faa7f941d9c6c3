"""inferwatch.audit"""
