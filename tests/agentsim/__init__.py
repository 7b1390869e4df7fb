"""Fixtures and a raw websockets client for the agentsim tests."""
