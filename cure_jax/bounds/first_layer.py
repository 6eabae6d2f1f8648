"""Exact bounds of an l_p ball through the first affine operation.

An l_p ball is kept symbolically — as a `PendingBall` x = center + s ⊙ P(δ),
||δ||_p <= eps, with P a reshape/transpose and s a per-element scale — while
it passes through operations that preserve that form (reshape, transpose,
adding, multiplying or dividing by constants: input normalization). At the
first operation that mixes coordinates (dot_general or conv) it is bounded
exactly by the dual norm (docs/method.md §2):

    (W x + b)_i ∈ W_i c + b_i ± eps · ||W_i ⊙ s||_q,   1/p + 1/q = 1,

where for a convolution W_i is the kernel patch that output i actually sees:
near a zero-padded border part of it falls on padding, so computing the norm
with the same (zero-padded) convolution is border-aware. For q < ∞,
||W_i ⊙ s||_q^q = (|W|^q applied to |s|^q)_i, one extra affine operation on a
single example; for q = ∞ (p = 1) the max over each patch.

When the ball is intersected with a domain box, its bounding box is carried
alongside and bounded by IBP; the two sound bounds are intersected. Any other
operation first replaces the ball by that box.
"""

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cure_jax.bounds import ibp_rules
from cure_jax.bounds.graph import Eqn, evaluate_concrete
from cure_jax.bounds.interval import Interval
from cure_jax.bounds.midpoint import midpoint_p
from cure_jax.bounds.sets import LpBall


@dataclasses.dataclass(frozen=True)
class PendingBall:
  """x = center + scale ⊙ P(δ) with ||δ||_p <= eps, not yet mixed.

  Attributes:
    center: [B, ...] the image of the ball's center.
    scale: [1 or B, ...] per-element multiplier of the (permuted) δ.
    eps: [B] radius per example.
    p: the norm.
    box: the image of the ball's bounding box ∩ domain (only with a domain).
  """

  center: jax.Array
  scale: jax.Array
  eps: jax.Array
  p: float
  box: Interval | None

  @property
  def shape(self):
    return self.center.shape

  def to_box(self) -> Interval:
    """A box containing the set: ±eps·|s| around the center, ∩ the domain box."""
    radius = self.eps.reshape((-1,) + (1,) * (self.center.ndim - 1)) * jnp.abs(
      self.scale
    )
    box = Interval.from_center_radius(self.center, radius)
    return box if self.box is None else box.intersect(self.box)


def from_lp_ball(ball: LpBall) -> PendingBall:
  center = jnp.asarray(ball.center)
  scale = jnp.ones((1,) + center.shape[1:], center.dtype)
  box = ball.bounding_box() if ball.domain is not None else None
  return PendingBall(center, scale, ball.radius_per_example(), ball.p, box)


def _replace(ball: PendingBall, eqn: Eqn, args, position: int, center, scale):
  box = None
  if ball.box is not None:
    box_args = list(args)
    box_args[position] = ball.box
    (box,) = ibp_rules.RULES[eqn.name](eqn, box_args)
  return PendingBall(center, scale, ball.eps, ball.p, box)


def _keeps_batch_axis(eqn: Eqn, ball: PendingBall) -> bool:
  """Whether a reshape-like op keeps axis 0 as the batch, untouched."""
  name, params = eqn.name, eqn.params
  if name == "reshape":
    return params.get("dimensions") is None and (
      params["new_sizes"][0] == ball.shape[0]
    )
  if name == "transpose":
    return params["permutation"][0] == 0
  if name == "squeeze":
    return 0 not in params["dimensions"]
  if name == "broadcast_in_dim":  # only inserting unit axes, e.g. expand_dims
    shape = params["shape"]
    return int(np.prod(shape)) == int(np.prod(ball.shape)) and params[
      "broadcast_dimensions"
    ][:1] == (0,)
  return name in ("convert_element_type", "copy", "copy_p")


def _per_example(eqn: Eqn, operand: jax.Array) -> jax.Array:
  """Applies a reshape-like ``eqn`` to a [1, ...] operand."""
  params = dict(eqn.params)
  if eqn.name == "reshape":
    params["new_sizes"] = (operand.shape[0],) + tuple(params["new_sizes"][1:])
  if eqn.name == "broadcast_in_dim":
    params["shape"] = (operand.shape[0],) + tuple(params["shape"][1:])
  return eqn.primitive.bind(operand, **params)


def _dual_norm_dot_general(eqn: Eqn, scale, weight, q) -> jax.Array:
  """||W_i ⊙ s||_q for ``dot_general(x, W)`` with x the (batched) lhs."""
  if q != math.inf:
    (out,) = evaluate_concrete(eqn, [jnp.abs(scale) ** q, jnp.abs(weight) ** q])
    return out ** (1.0 / q)
  (lhs_contract, rhs_contract), _ = eqn.params["dimension_numbers"]
  s_free = [a for a in range(scale.ndim) if a not in lhs_contract]
  w_free = [a for a in range(weight.ndim) if a not in rhs_contract]
  s = jnp.transpose(jnp.abs(scale), s_free + list(lhs_contract))
  w = jnp.transpose(jnp.abs(weight), list(rhs_contract) + w_free)
  k = int(np.prod([scale.shape[a] for a in lhs_contract]))
  s = s.reshape(s.shape[: len(s_free)] + (k, 1))
  w = w.reshape((k, -1))
  out = jnp.max(s * w, axis=-2)  # max_k |s_k W_ki|
  return out.reshape(
    s.shape[: len(s_free)] + tuple(weight.shape[a] for a in w_free)
  )


def _dual_norm_conv(eqn: Eqn, scale, kernel, q) -> jax.Array:
  """||W_i ⊙ s||_q over the patch of each conv output (zero padding aware)."""
  if q != math.inf:
    (out,) = evaluate_concrete(eqn, [jnp.abs(scale) ** q, jnp.abs(kernel) ** q])
    return out ** (1.0 / q)
  params = eqn.params
  lhs_spec, rhs_spec, out_spec = params["dimension_numbers"]
  groups = params["feature_group_count"]
  spatial = [kernel.shape[a] for a in rhs_spec[2:]]
  patches = jax.lax.conv_general_dilated_patches(
    jnp.abs(scale),
    spatial,
    params["window_strides"],
    params["padding"],
    lhs_dilation=params["lhs_dilation"],
    rhs_dilation=params["rhs_dilation"],
    dimension_numbers=params["dimension_numbers"],
  )
  # Patches: feature axis ordered (in-channel, *window), in-channel major.
  patches = jnp.transpose(patches, (out_spec[0], *out_spec[2:], out_spec[1]))
  window = int(np.prod(spatial))
  c_in = scale.shape[lhs_spec[1]]
  patches = patches.reshape(
    patches.shape[:-1] + (groups, c_in // groups, window)
  )
  w = jnp.transpose(jnp.abs(kernel), (rhs_spec[0], rhs_spec[1], *rhs_spec[2:]))
  c_out = w.shape[0]
  w = w.reshape(groups, c_out // groups, c_in // groups, window)
  prod = patches[..., :, None, :, :] * w  # [..., G, Cout/G, Cin/G, window]
  out = jnp.max(prod, axis=(-1, -2)).reshape(patches.shape[:-3] + (c_out,))
  inverse = np.argsort((out_spec[0], *out_spec[2:], out_spec[1]))
  return jnp.transpose(out, inverse)


def _mixing_bound(eqn: Eqn, args, ball: PendingBall) -> Interval:
  """The dual-norm bound at the first dot_general / conv (see module doc)."""
  weight = args[1]
  q = (
    math.inf
    if ball.p == 1
    else (1.0 if ball.p == math.inf else ball.p / (ball.p - 1.0))
  )
  (center,) = evaluate_concrete(eqn, [ball.center, weight])
  if eqn.name == "dot_general":
    norms = _dual_norm_dot_general(eqn, ball.scale, weight, q)
  else:
    norms = _dual_norm_conv(eqn, ball.scale, weight, q)
  eps = ball.eps.reshape((-1,) + (1,) * (center.ndim - 1))
  bound = Interval.from_center_radius(center, eps * norms)
  if ball.box is not None:
    (box_bound,) = ibp_rules.RULES[eqn.name](eqn, [ball.box, weight])
    bound = bound.intersect(box_bound)
  return bound


def _is_first_mixing(eqn: Eqn, args) -> bool:
  if (
    len(args) != 2
    or not isinstance(args[0], PendingBall)
    or isinstance(args[1], (PendingBall, Interval))
  ):
    return False
  if eqn.name == "conv_general_dilated":
    lhs_spec = eqn.params["dimension_numbers"][0]
    return lhs_spec[0] == 0 and eqn.params.get("batch_group_count", 1) == 1
  if eqn.name == "dot_general":
    (lhs_contract, _), (lhs_batch, _) = eqn.params["dimension_numbers"]
    return not lhs_batch and 0 not in lhs_contract
  return False


def _drop_repeated_batch(k):
  """k[:1] when a concrete k repeats along the batch axis (a broadcast constant).

  Keeps the scale per example rather than per batch element, so the dual
  norm costs one operation on a single example.
  """
  if isinstance(k, jax.core.Tracer) or np.ndim(k) == 0 or np.shape(k)[0] == 1:
    return k
  k_np = np.asarray(k)
  return k[:1] if np.all(k_np == k_np[:1]) else k


def _constant_other(args, position) -> Any | None:
  other = args[1 - position]
  return None if isinstance(other, (PendingBall, Interval)) else other


def apply(eqn: Eqn, args: Sequence[Any], ibp_table) -> list[Any]:
  """Applies ``eqn`` with at least one `PendingBall` operand."""
  args = list(args)
  positions = [i for i, a in enumerate(args) if isinstance(a, PendingBall)]
  if eqn.name == midpoint_p.name:  # a value of the set's box, not a new set
    positions = []
  if _is_first_mixing(eqn, args):
    return [_mixing_bound(eqn, args, args[0])]
  if len(positions) == 1 and len(args) <= 2:
    i = positions[0]
    ball = args[i]
    if len(args) == 1 and _keeps_batch_axis(eqn, ball):
      (center,) = evaluate_concrete(eqn, [ball.center])
      scale = (
        _per_example(eqn, ball.scale)
        if ball.scale.shape[0] == 1
        else (evaluate_concrete(eqn, [ball.scale])[0])
      )
      return [_replace(ball, eqn, args, i, center, scale)]
    if len(args) == 1 and eqn.name == "neg":
      return [_replace(ball, eqn, args, i, -ball.center, -ball.scale)]
    k = _constant_other(args, i) if len(args) == 2 else None
    if k is not None:
      if eqn.name in ("add", "add_any") or (eqn.name == "sub" and i == 0):
        (center,) = evaluate_concrete(
          eqn, args[:i] + [ball.center] + args[i + 1 :]
        )
        return [_replace(ball, eqn, args, i, center, ball.scale)]
      if eqn.name == "sub":  # k - x
        return [_replace(ball, eqn, args, i, k - ball.center, -ball.scale)]
      if eqn.name == "mul" or (eqn.name == "div" and i == 0):
        (center,) = evaluate_concrete(
          eqn, args[:i] + [ball.center] + args[i + 1 :]
        )
        k = _drop_repeated_batch(k)
        scale = ball.scale * k if eqn.name == "mul" else ball.scale / k
        if (
          scale.shape[1:] != ball.center.shape[1:]
          or scale.ndim != ball.center.ndim
        ):
          scale = jnp.broadcast_to(
            scale, (scale.shape[0],) + ball.center.shape[1:]
          )
        return [_replace(ball, eqn, args, i, center, scale)]
  # Anything else: continue from the ball's bounding box.
  boxed = [a.to_box() if isinstance(a, PendingBall) else a for a in args]
  rule = ibp_table.get(eqn.name)
  if rule is None:
    raise eqn.unsupported("IBP")
  return rule(eqn, boxed)
