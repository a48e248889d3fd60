"""The OpenAI-compatible mock server: the quickstart's default backend and every test's endpoint.

Standard library only; imports nothing else of the package.
"""
