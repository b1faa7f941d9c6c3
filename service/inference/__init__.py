"""inferwatch.inference"""
