"""inferwatch.analysis"""
