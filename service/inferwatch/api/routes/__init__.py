"""inferwatch.api.routes"""
