"""Tests for cure_jax/log_setup.py."""

import logging as std_logging

from absl import logging

from cure_jax import log_setup


def test_info_reaches_the_log_file_and_library_chatter_does_not(tmp_path):
  path = log_setup.setup(str(tmp_path), name="certify")
  assert log_setup.setup(str(tmp_path), name="certify") == path  # idempotent
  logging.info("certified %d of %d", 7, 10)
  chatter = std_logging.LogRecord(
    "absl",
    std_logging.INFO,
    "/x/site-packages/orbax/checkpoint/a.py",
    1,
    "saved step 5",
    None,
    None,
  )
  warning = std_logging.LogRecord(
    "absl",
    std_logging.WARNING,
    "/x/site-packages/orbax/checkpoint/a.py",
    1,
    "disk almost full",
    None,
    None,
  )
  for record in (chatter, warning):
    std_logging.getLogger("absl").handle(record)
  for handler in std_logging.getLogger("absl").handlers:
    handler.flush()
  text = (tmp_path / "certify.log").read_text()
  assert "certified 7 of 10" in text
  assert "disk almost full" in text and "saved step 5" not in text
  for handler in list(std_logging.getLogger("absl").handlers):
    if getattr(handler, "baseFilename", None) == path:
      std_logging.getLogger("absl").removeHandler(handler)
      handler.close()
