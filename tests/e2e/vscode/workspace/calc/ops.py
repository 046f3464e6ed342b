"""Arithmetic on numbers, with the checks a calculator needs."""


def add(a, b):
    """Return the sum of a and b."""
    return a + b


def subtract(a, b):
    """Return a minus b."""
    return a - b


def multiply(a, b):
    """Return the product of a and b."""
    return a * b


def divide(a, b):
    """Return a divided by b; raise ZeroDivisionError when b is zero."""
    if b == 0:
        raise ZeroDivisionError("division by zero")
    return a / b
