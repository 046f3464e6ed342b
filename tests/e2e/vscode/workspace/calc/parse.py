"""Parse simple infix expressions such as `2 + 3 * 4`."""

import re

from .ops import add, divide, multiply, subtract

OPERATORS = {"+": add, "-": subtract, "*": multiply, "/": divide}
PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
TOKEN = re.compile(r"\s*(\d+\.?\d*|[-+*/()])")


def tokenize(text):
    """Split an expression into numbers and operators."""
    tokens = []
    position = 0
    while position < len(text):
        match = TOKEN.match(text, position)
        if match is None:
            raise ValueError(f"unexpected character at {position}: {text[position]!r}")
        tokens.append(match.group(1))
        position = match.end()
    return tokens


def to_postfix(tokens):
    """Reorder infix tokens into postfix order (shunting-yard)."""
    output, stack = [], []
    for token in tokens:
        if token in OPERATORS:
            while stack and stack[-1] in OPERATORS and PRECEDENCE[stack[-1]] >= PRECEDENCE[token]:
                output.append(stack.pop())
            stack.append(token)
        elif token == "(":
            stack.append(token)
        elif token == ")":
            while stack and stack[-1] != "(":
                output.append(stack.pop())
            stack.pop()
        else:
            output.append(float(token))
    while stack:
        output.append(stack.pop())
    return output


def evaluate(text):
    """Evaluate an infix expression."""
    stack = []
    for item in to_postfix(tokenize(text)):
        if isinstance(item, float):
            stack.append(item)
        else:
            right = stack.pop()
            left = stack.pop()
            stack.append(OPERATORS[item](left, right))
    return stack[0]
