"""A small calculator package: the fixture workspace of the VS Code end-to-end test."""

from .ops import add, divide, multiply, subtract

__all__ = ["add", "subtract", "multiply", "divide"]
