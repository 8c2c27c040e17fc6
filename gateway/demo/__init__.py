"""DEMO ONLY: a stand-in AI model service for `make run` and the tests. Not for production."""
