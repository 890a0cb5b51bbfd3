"""explain.formats"""
