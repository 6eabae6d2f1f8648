"""Writes l∞ robustness properties as VNNLIB.

The property of a test point x with label y at radius ε is the box
``max(x − ε, 0) ≤ X ≤ min(x + ε, 1)`` (elementwise, in the ONNX input's
flattened order) with the unsafe outputs "some other logit is at least the
label's"::

  (assert (or (and (>= Y_0 Y_y)) … (and (>= Y_{K−1} Y_y))))

so "unsat" certifies that the label's logit is the largest over the whole
box (ties count as unsafe). VNNLIB has no l2 or l1 balls: only boxes bound
the inputs (see docs/interchange.md).
"""

import numpy as np


def _number(value: float) -> str:
  """The shortest decimal that reads back as the same float64."""
  return repr(float(value))


def robustness_property(
  lower: np.ndarray,
  upper: np.ndarray,
  label: int,
  num_classes: int,
  comment: str = "",
) -> str:
  """The VNNLIB text of "the label's logit is not the largest on the box".

  Args:
    lower: the box's lower corner (flattened in the ONNX input's order).
    upper: its upper corner, same shape.
    label: the class y whose logit must stay the largest.
    num_classes: the number of outputs K.
    comment: a line put at the top as a comment (may hold several lines).

  Returns:
    The file's text.

  Raises:
    ValueError: the corners differ in shape, the label is not a class, or
      some lower bound exceeds its upper bound.
  """
  lower, upper = np.ravel(lower), np.ravel(upper)
  if lower.shape != upper.shape:
    raise ValueError(f"corners of shapes {lower.shape} and {upper.shape}.")
  if not 0 <= label < num_classes:
    raise ValueError(f"label {label} is not in [0, {num_classes}).")
  if np.any(lower > upper):
    raise ValueError("some lower bound of the box exceeds its upper bound.")
  lines = [f"; {line}" for line in comment.splitlines()]
  lines += [f"(declare-const X_{i} Real)" for i in range(lower.size)]
  lines += [f"(declare-const Y_{j} Real)" for j in range(num_classes)]
  for i, (lo, hi) in enumerate(zip(lower, upper)):
    lines.append(f"(assert (>= X_{i} {_number(lo)}))")
    lines.append(f"(assert (<= X_{i} {_number(hi)}))")
  others = [j for j in range(num_classes) if j != label]
  lines.append("(assert (or")
  lines += [f"  (and (>= Y_{j} Y_{label}))" for j in others]
  lines.append("))")
  return "\n".join(lines) + "\n"
