"""Prepares datasets once, e.g. before a multi-host run.

python -m cure_jax.data mnist cifar10 --data_dir /data/originals
"""

import argparse
import sys
import time

from cure_jax.data import info, loading, sources


def main() -> None:
  """Prepares the named datasets and warms their array caches."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("names", nargs="+", choices=info.DATASET_NAMES)
  parser.add_argument(
    "--data_dir",
    default=None,
    help="directory of the original files (default: $CURE_<NAME>_DIR,"
    " $CURE_DATA_DIR, tfds manual dir, then download)",
  )
  parser.add_argument(
    "--tfds_data_dir", default=None, help="where tfds keeps prepared datasets"
  )
  parser.add_argument(
    "--no_download", action="store_true", help="fail instead of downloading"
  )
  args = parser.parse_args()
  for name in args.names:
    for split in loading.SPLITS:
      start = time.perf_counter()
      try:
        data = loading.load_split(
          name,
          split,
          data_dir=args.data_dir,
          tfds_data_dir=args.tfds_data_dir,
          download=not args.no_download,
        )
      except sources.DataNotFoundError as e:
        sys.exit(f"error: {e}")
      print(
        f"{name} {split}: {data.num_examples} examples, images"
        f" {data.images.shape[1:]}, {time.perf_counter() - start:.1f} s"
      )


if __name__ == "__main__":
  main()
