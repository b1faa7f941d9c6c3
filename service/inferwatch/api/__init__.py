"""inferwatch.api"""
