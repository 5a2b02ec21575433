"""Exact arithmetic on text nobody vouches for: the arithmetic checker's and the consistency
rule's evaluator.

:func:`evaluate_arithmetic` computes an expression on its syntax tree with exact fractions,
never with ``eval``, and bounds its own work, so a producer's ``expression`` or a number
sentence found in a model's answer can be computed without trusting either.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from fractions import Fraction

#: Largest numerator or denominator, in bits, an arithmetic expression may reach. Far beyond
#: any grade-school answer, and small enough that no expression of 512 characters can take
#: noticeable time or memory: "9**9**9" is refused before anything is computed.
MAX_BITS = 4096


class ExpressionError(ValueError):
    """An expression the arithmetic checker will not (or cannot) compute; says why."""


_BINARY: dict[type[ast.operator], Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: Fraction(a // b),
    ast.Mod: lambda a, b: a % b,
}


def evaluate_arithmetic(expression: str) -> Fraction:
    """The exact value of ``expression``: numbers, + - * / // % **, unary + -, parentheses.

    Evaluated on the syntax tree with exact fractions (so ``2/5`` is two fifths, not a
    float), never with ``eval``: a name, a call, an attribute or anything else is refused
    without being run. Powers are bounded before they are computed (see :data:`MAX_BITS`);
    a non-integer power is computed in floating point and must be real and finite.
    Raises :class:`ExpressionError` (a ValueError) saying what is wrong.
    """
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise ExpressionError(f"not an expression ({type(exc).__name__})") from None
    try:
        return _eval(tree.body)
    except RecursionError:
        raise ExpressionError("expression nested too deeply") from None
    except ZeroDivisionError:
        raise ExpressionError("division by zero") from None


def _eval(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ExpressionError(f"not a number: {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ExpressionError(f"not a finite number: {value!r}")
        # repr() is the shortest text of the float, so 0.1 becomes exactly 1/10.
        return _bounded(Fraction(value) if isinstance(value, int) else Fraction(repr(value)))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
        operand = _eval(node.operand)
        return operand if isinstance(node.op, ast.UAdd) else -operand
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            return _power(left, right)
        operation = _BINARY.get(type(node.op))
        if operation is None:
            raise ExpressionError(f"operator not allowed: {type(node.op).__name__}")
        return _bounded(operation(left, right))
    raise ExpressionError(f"not allowed in an arithmetic expression: {type(node).__name__}")


def _bits(value: Fraction) -> int:
    return max(value.numerator.bit_length(), value.denominator.bit_length())


def _bounded(value: Fraction) -> Fraction:
    if _bits(value) > MAX_BITS:
        raise ExpressionError(f"a value exceeds {MAX_BITS} bits")
    return value


def _power(base: Fraction, exponent: Fraction) -> Fraction:
    if exponent.denominator == 1:
        n = exponent.numerator
        if base in (0, 1, -1):  # cheap at any exponent: 1 ** 10**100 is fine
            return base**n
        if abs(n) * _bits(base) > MAX_BITS:
            raise ExpressionError(f"power too large (more than {MAX_BITS} bits)")
        return _bounded(base**n)
    try:
        value = float(base) ** float(exponent)
    except (OverflowError, ZeroDivisionError) as exc:
        raise ExpressionError(f"power out of range ({exc})") from None
    if isinstance(value, complex) or not math.isfinite(value):
        raise ExpressionError("power is not a finite real number")
    return _bounded(Fraction(value))
