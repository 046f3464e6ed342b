"""Command-line entry point of the calculator."""

import sys

from calc.parse import evaluate


def main(argv):
    for expression in argv[1:]:
        print(expression, "=", evaluate(expression))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
