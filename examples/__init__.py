"""Runnable examples: ``python -m examples.<name> [--size tiny]``.

* `certify_custom_model`: a Flax model of your own (no ``train`` argument)
  bounded with `cure_jax.bounds` and certified with `cure_jax.certify`.
* `train_custom_model_ibp`: the same model trained certified with an IBP loss
  built from `cure_jax.objectives.robust_losses` and optax.
* `plot_tiny_runs`: a standard and an IBP-trained model certified with radius
  search and compared in one figure with `cure_jax.plot`.

Each runs on synthetic images (`synthetic_images`) and exposes
``main(argv) -> dict``; ``--size tiny`` runs in seconds.
"""
