"""A parser for the VNNLIB properties of VNN-COMP.

A VNNLIB file declares the network's inputs ``X_0 … X_{n−1}`` and outputs
``Y_0 … Y_{m−1}`` as reals and asserts a formula describing the *unsafe*
behaviour: the property holds ("unsat") iff no input satisfying the input
constraints maps to outputs satisfying the output constraints. Supported::

  (declare-const X_0 Real)                 ; inputs and outputs
  (assert (<= X_0 0.5))                    ; bounds of single inputs
  (assert (>= X_0 -0.5))
  (assert (or (and (>= Y_0 Y_1))           ; conjunctions and disjunctions
              (and (>= Y_0 Y_2) (<= Y_0 0.1))))

Atoms are ``<=``, ``>=``, ``<``, ``>`` or ``=`` between linear terms:
numbers, variables, ``(+ t …)``, ``(- t …)`` and ``(* c t)`` with a number
``c``. Atoms over inputs must bound a single input; atoms over outputs may be
any linear inequality; an atom may not mix inputs and outputs. ``and``/``or``
nest freely (the formula is expanded to a disjunction of conjunctions).

The result, `VnnlibProperty`, is a list of `InputRegion`s — boxes, each with
the disjuncts (`OutputSpec`: rows ``c·y + d ≥ 0``, all of which together
describe unsafe outputs) that apply to it. The property is unsat iff every
disjunct of every region is infeasible over its box. Strict inequalities are
kept as a flag: a counterexample must satisfy them strictly, while bounds
treat them as non-strict (proving ``c·y + d < 0`` proves both).

Boxes are kept in float64, as written; `float32_box` rounds one to float32
outward (a float32 verifier then bounds a superset of the declared box) or
inward (points found in it lie in the declared box).
"""

import dataclasses
import gzip
import itertools
import os
import re
from typing import NamedTuple

import numpy as np

_VARIABLE = re.compile(r"^([XY])_(\d+)$")
_IGNORED_COMMANDS = {"check-sat", "get-model", "exit", "set-logic", "set-info"}
_COMPARISONS = {"<=", ">=", "<", ">", "="}
MAX_DISJUNCTS = 100_000


class VnnlibError(ValueError):
  """The file is not in the supported VNNLIB subset; names the line."""


class OutputSpec(NamedTuple):
  """One disjunct of the unsafe outputs: every row ``c·y + d ≥ 0`` holds.

  Attributes:
    coeffs: [R, m] float64 row coefficients ``c`` over the outputs.
    offsets: [R] float64 constants ``d``.
    strict: [R] bool, the row is ``c·y + d > 0``.
  """

  coeffs: np.ndarray
  offsets: np.ndarray
  strict: np.ndarray


class InputRegion(NamedTuple):
  """A box of inputs and the unsafe output disjuncts over it.

  Attributes:
    lower: [n] float64 lower bounds of ``X_0 … X_{n−1}``.
    upper: [n] float64 upper bounds.
    disjuncts: the `OutputSpec`s; the region is safe iff each is infeasible.
  """

  lower: np.ndarray
  upper: np.ndarray
  disjuncts: tuple[OutputSpec, ...]


class VnnlibProperty(NamedTuple):
  """A parsed property: unsafe iff some region's box reaches a disjunct."""

  num_inputs: int
  num_outputs: int
  regions: tuple[InputRegion, ...]


@dataclasses.dataclass(frozen=True)
class _Token:
  text: str
  line: int


@dataclasses.dataclass(frozen=True)
class _Atom:
  """``Σ coeffs[v]·v + constant ≥ 0`` (``> 0`` if strict)."""

  coeffs: tuple[tuple[str, float], ...]
  constant: float
  strict: bool
  line: int


def _error(line: int, message: str) -> VnnlibError:
  return VnnlibError(f"line {line}: {message}")


def _tokens(text: str) -> list[_Token]:
  tokens = []
  for number, line in enumerate(text.splitlines(), start=1):
    line = line.split(";", 1)[0]
    for piece in line.replace("(", " ( ").replace(")", " ) ").split():
      tokens.append(_Token(piece, number))
  return tokens


def _expressions(tokens: list[_Token]) -> list:
  """Nested lists of tokens, one per top-level form."""
  stack: list[list] = [[]]
  opened: list[int] = []
  for token in tokens:
    if token.text == "(":
      stack.append([])
      opened.append(token.line)
    elif token.text == ")":
      if len(stack) == 1:
        raise _error(token.line, "unbalanced ')'.")
      form = stack.pop()
      opened.pop()
      stack[-1].append(form)
    else:
      stack[-1].append(token)
  if opened:
    raise _error(opened[-1], "'(' is never closed.")
  for form in stack[0]:
    if isinstance(form, _Token):
      raise _error(form.line, f"unexpected {form.text!r} outside a form.")
  return stack[0]


def _line(form) -> int:
  while isinstance(form, list):
    if not form:
      return 0
    form = form[0]
  return form.line


def _head(form) -> str:
  if not form or not isinstance(form[0], _Token):
    raise _error(_line(form), "expected an operator after '('.")
  return form[0].text


class _Parser:
  def __init__(self):
    self.declared: dict[str, int] = {}  # name -> line

  def declare(self, form) -> None:
    line = _line(form)
    if (
      len(form) != 3
      or not isinstance(form[1], _Token)
      or not isinstance(form[2], _Token)
    ):
      raise _error(line, "expected (declare-const NAME Real).")
    name, sort = form[1].text, form[2].text
    if not _VARIABLE.match(name):
      raise _error(line, f"variable {name!r} is neither X_i nor Y_j.")
    if sort != "Real":
      raise _error(line, f"{name} has sort {sort!r}; only Real is supported.")
    if name in self.declared:
      raise _error(line, f"{name} is declared twice.")
    self.declared[name] = line

  def term(self, form) -> tuple[dict[str, float], float]:
    """A linear term as (coefficients by variable, constant)."""
    if isinstance(form, _Token):
      if form.text in self.declared:
        return {form.text: 1.0}, 0.0
      if _VARIABLE.match(form.text):
        raise _error(form.line, f"{form.text} is used before it is declared.")
      try:
        return {}, float(form.text)
      except ValueError:
        raise _error(form.line, f"unknown symbol {form.text!r}.") from None
    head, args = _head(form), form[1:]
    parts = [self.term(a) for a in args]
    if head == "+" and parts:
      return _combine(parts, [1.0] * len(parts))
    if head == "-" and len(parts) == 1:
      return _combine(parts, [-1.0])
    if head == "-" and parts:
      return _combine(parts, [1.0] + [-1.0] * (len(parts) - 1))
    if head == "*" and len(parts) == 2:
      constants = [i for i, (coeffs, _) in enumerate(parts) if not coeffs]
      if constants:
        factor = parts[constants[0]][1]
        return _combine([parts[1 - constants[0]]], [factor])
      raise _error(_line(form), "(* …) of two variables is not linear.")
    raise _error(
      _line(form),
      f"unsupported term ({head} …); terms are numbers, variables, "
      "(+ …), (- …) and (* number term).",
    )

  def atom(self, form) -> _Atom:
    head, line = _head(form), _line(form)
    if len(form) != 3:
      raise _error(line, f"({head} …) needs exactly two operands.")
    (lc, lk), (rc, rk) = self.term(form[1]), self.term(form[2])
    difference, constant = _combine([(lc, lk), (rc, rk)], [1.0, -1.0])
    if head in ("<=", "<"):
      difference = {v: -c for v, c in difference.items()}
      constant = -constant
    return _Atom(
      tuple(sorted(difference.items())), constant, head in ("<", ">"), line
    )

  def dnf(self, form) -> list[list[_Atom]]:
    """The formula as a disjunction (list) of conjunctions (lists of atoms)."""
    if isinstance(form, _Token):
      raise _error(form.line, f"expected a formula, got {form.text!r}.")
    head = _head(form)
    if head == "and":
      return _conjoin([self.dnf(f) for f in form[1:]], _line(form))
    if head == "or":
      return [c for f in form[1:] for c in self.dnf(f)]
    if head == "=":
      ge = self.atom([_Token(">=", _line(form))] + form[1:])
      le = self.atom([_Token("<=", _line(form))] + form[1:])
      return [[ge, le]]
    if head in _COMPARISONS:
      return [[self.atom(form)]]
    raise _error(
      _line(form),
      f"unsupported connective {head!r}; formulas use and, or, <=, >=, <, "
      ">, =.",
    )


def _combine(parts, factors) -> tuple[dict[str, float], float]:
  coeffs: dict[str, float] = {}
  constant = 0.0
  for (c, k), f in zip(parts, factors):
    for v, a in c.items():
      coeffs[v] = coeffs.get(v, 0.0) + f * a
    constant += f * k
  return {v: a for v, a in coeffs.items() if a != 0.0}, constant


def _conjoin(dnfs: list[list[list[_Atom]]], line: int) -> list[list[_Atom]]:
  count = 1
  for d in dnfs:
    count *= len(d)
  if count > MAX_DISJUNCTS:
    raise _error(
      line,
      f"expanding this conjunction gives {count} disjuncts (more than "
      f"{MAX_DISJUNCTS}).",
    )
  return [[a for c in combo for a in c] for combo in itertools.product(*dnfs)]


def _indices(declared: dict[str, int], kind: str) -> int:
  indices = sorted(int(n[2:]) for n in declared if n[0] == kind)
  if indices != list(range(len(indices))):
    missing = sorted(set(range(max(indices, default=-1) + 1)) - set(indices))
    name = f"{kind}_{missing[0]}"
    raise VnnlibError(f"{name} is not declared, but a later {kind}_i is.")
  return len(indices)


def float32_box(
  lower: np.ndarray, upper: np.ndarray, outward: bool
) -> tuple[np.ndarray, np.ndarray]:
  """A float64 box rounded to float32, outward or inward.

  Outward: the float32 box contains the float64 one (lower bounds rounded
  down, upper bounds up). Inward: contained in it, except along an axis where
  no float32 value lies inside (then rounded to nearest).

  Returns:
    (lower, upper) as float32 arrays.
  """
  lo, hi = lower.astype(np.float32), upper.astype(np.float32)
  down, up = np.float32(-np.inf), np.float32(np.inf)
  if outward:
    lo = np.where(lo > lower, np.nextafter(lo, down), lo)
    hi = np.where(hi < upper, np.nextafter(hi, up), hi)
    return lo.astype(np.float32), hi.astype(np.float32)
  inner_lo = np.where(lo < lower, np.nextafter(lo, up), lo)
  inner_hi = np.where(hi > upper, np.nextafter(hi, down), hi)
  empty = inner_lo > inner_hi
  return (
    np.where(empty, lo, inner_lo).astype(np.float32),
    np.where(empty, hi, inner_hi).astype(np.float32),
  )


class _Conjunction(NamedTuple):
  lower: np.ndarray
  upper: np.ndarray
  spec: OutputSpec | None  # None: infeasible for a constant atom


def _split(
  atoms: list[_Atom], num_inputs: int, num_outputs: int
) -> _Conjunction:
  lower = np.full(num_inputs, -np.inf)
  upper = np.full(num_inputs, np.inf)
  rows, offsets, strict = [], [], []
  feasible = True
  for atom in atoms:
    kinds = {v[0] for v, _ in atom.coeffs}
    if kinds == {"X", "Y"}:
      raise _error(atom.line, "an atom may not mix inputs X and outputs Y.")
    if not kinds:  # a constant comparison
      holds = atom.constant > 0 if atom.strict else atom.constant >= 0
      feasible = feasible and holds
    elif kinds == {"X"}:
      if len(atom.coeffs) != 1:
        raise _error(
          atom.line,
          "constraints over several inputs are not supported; bound each "
          "X_i by a constant.",
        )
      ((name, a),) = atom.coeffs
      i, bound = int(name[2:]), -atom.constant / a
      if a > 0:
        lower[i] = max(lower[i], bound)
      else:
        upper[i] = min(upper[i], bound)
    else:
      row = np.zeros(num_outputs)
      for name, a in atom.coeffs:
        row[int(name[2:])] = a
      rows.append(row)
      offsets.append(atom.constant)
      strict.append(atom.strict)
  spec = OutputSpec(
    np.reshape(np.array(rows, np.float64), (len(rows), num_outputs)),
    np.array(offsets, np.float64),
    np.array(strict, bool),
  )
  return _Conjunction(lower, upper, spec if feasible else None)


def parse_vnnlib(text: str) -> VnnlibProperty:
  """Parses the text of a VNNLIB property (see the module docstring).

  Args:
    text: the file's contents.

  Returns:
    The `VnnlibProperty`.

  Raises:
    VnnlibError: syntax or constructs outside the supported subset, with the
      line number; an input without a lower or upper bound.
  """
  parser = _Parser()
  disjunction: list[list[_Atom]] = [[]]
  common: list[_Atom] = []
  for form in _expressions(_tokens(text)):
    head = _head(form)
    if head == "declare-const":
      parser.declare(form)
    elif head == "assert":
      if len(form) != 2:
        raise _error(_line(form), "(assert …) takes exactly one formula.")
      formula = parser.dnf(form[1])
      if len(formula) == 1:  # most asserts: one conjunction, kept aside
        common.extend(formula[0])
      else:
        disjunction = _conjoin([disjunction, formula], _line(form))
    elif head not in _IGNORED_COMMANDS:
      raise _error(
        _line(form),
        f"unsupported command {head!r}; expected declare-const or assert.",
      )
  num_inputs = _indices(parser.declared, "X")
  num_outputs = _indices(parser.declared, "Y")
  if not num_inputs or not num_outputs:
    raise VnnlibError("the property declares no inputs X_i or no outputs Y_j.")
  regions: dict[bytes, InputRegion] = {}
  for atoms in disjunction:
    conjunction = _split(common + atoms, num_inputs, num_outputs)
    if conjunction.spec is None:
      continue
    _check_bounded(conjunction, parser.declared)
    lower, upper = conjunction.lower, conjunction.upper
    key = lower.tobytes() + upper.tobytes()
    region = regions.get(key, InputRegion(lower, upper, ()))
    regions[key] = region._replace(
      disjuncts=region.disjuncts + (conjunction.spec,)
    )
  return VnnlibProperty(num_inputs, num_outputs, tuple(regions.values()))


def _check_bounded(conjunction: _Conjunction, declared: dict[str, int]) -> None:
  for side, values in (
    ("lower", conjunction.lower),
    ("upper", conjunction.upper),
  ):
    unbounded = np.flatnonzero(~np.isfinite(values))
    if unbounded.size:
      name = f"X_{unbounded[0]}"
      raise _error(
        declared[name],
        f"{name} has no {side} bound; assert (>= {name} …) and "
        f"(<= {name} …) for every input.",
      )


def read_vnnlib(path) -> VnnlibProperty:
  """Parses a ``.vnnlib`` (or ``.vnnlib.gz``) file; errors name the file."""
  path = os.fspath(path)
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rt") as f:
    text = f.read()
  try:
    return parse_vnnlib(text)
  except VnnlibError as error:
    raise VnnlibError(f"{path}: {error}") from None
