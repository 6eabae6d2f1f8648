"""The train-step benchmark's method list keeps bracketed values whole."""

from cure_jax.benchmarks.train_step import split_methods


def test_split_methods_keeps_tuple_values_in_one_method():
  text = "natural,l1/l1_variant='certified',cure_max/train_norms=('linf','l1')"
  assert split_methods(text) == [
    "natural",
    "l1/l1_variant='certified'",
    "cure_max/train_norms=('linf','l1')",
  ]


def test_split_methods_of_one_method():
  assert split_methods("sabr") == ["sabr"]
