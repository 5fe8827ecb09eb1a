"""Checks of config values, each failing with a message that names the key, the value and
what it may be. Families and model builders call them before anything is compiled."""
import math
from collections.abc import Sequence

from gen import UsageError


def _fail(key: str, value, allowed: str):
  raise UsageError(f"config.{key}={value!r} {allowed}.")


def number(value, key: str) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    _fail(key, value, "must be a finite number")
  return value


def positive(value, key: str) -> float:
  """value > 0."""
  if number(value, key) <= 0:
    _fail(key, value, "must be positive")
  return value


def at_least(value, key: str, minimum: int) -> int:
  """An integer >= minimum."""
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    _fail(key, value, f"must be an integer of at least {minimum}")
  return value


def in_range(value, key: str, low: float, high: float, low_open: bool = False,
             high_open: bool = False) -> float:
  """low <= value <= high, with either end excluded where it is open."""
  number(value, key)
  if value < low or value > high or (low_open and value == low) or (high_open and value == high):
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    _fail(key, value, f"must be in {interval}")
  return value


def widths(values: Sequence[int], key: str, min_length: int = 1) -> tuple[int, ...]:
  """A sequence of at least `min_length` positive integers (layer widths)."""
  values = tuple(values)
  if len(values) < min_length or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                                     for v in values):
    _fail(key, values, f"must be {min_length} or more positive integers")
  return values


def one_of(value, key: str, choices: Sequence) -> str:
  if value not in choices:
    _fail(key, value, f"must be one of {tuple(choices)}")
  return value
