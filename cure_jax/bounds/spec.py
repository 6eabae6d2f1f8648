"""Output specifications: linear functions of the logits to bound."""

import jax
import jax.numpy as jnp


def margin_spec(labels: jax.Array, num_classes: int) -> jax.Array:
  """Rows e_y - e_j for every j != y (docs/method.md §2): [B, K-1, K].

  A positive lower bound on every row, z_y - z_j > 0, certifies that the
  prediction is y everywhere in the input set.

  Args:
    labels: [B] integer labels.
    num_classes: K.

  Returns:
    The specification C with C[b, i] = e_{y_b} - e_{j_i(b)}, where j runs
    over the classes other than y_b in increasing order.
  """
  labels = jnp.asarray(labels)
  eye = jnp.eye(num_classes, dtype=jnp.float32)
  # others[b] = the K-1 classes != y_b, in order.
  classes = jnp.arange(num_classes - 1)
  others = classes[None, :] + (classes[None, :] >= labels[:, None])
  return eye[labels][:, None, :] - eye[others]


def pad_margins(margin_lower: jax.Array) -> jax.Array:
  """Worst-case logits [0, -lb_1, ..., -lb_{K-1}] whose class 0 is the label.

  The robust cross-entropy of docs/method.md §2 is CE(pad_margins(lb), 0).
  """
  zeros = jnp.zeros(margin_lower.shape[:-1] + (1,), margin_lower.dtype)
  return jnp.concatenate([zeros, -margin_lower], axis=-1)
