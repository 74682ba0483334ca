"""Serving: Triton repository and serve, the web page, batch jobs on Ray.
"""
