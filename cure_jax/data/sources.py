"""Where a dataset's original files come from: a local directory or the web.

The project's tfds builders read the ORIGINAL distribution files of their
dataset: `OriginalFilesBuilder` takes them from tfds's manual directory when
they are there and downloads them otherwise, so offline and online
preparation produce the same dataset. Nothing here needs TensorFlow
(downloads use `requests`; `array_record` files are read by
`tfds.data_source`).
"""

from __future__ import annotations

import abc
import hashlib
import inspect
import threading
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, NamedTuple
from urllib import parse

import numpy as np
import requests
import tensorflow_datasets as tfds
from etils import epath


class DataNotFoundError(FileNotFoundError):
  """A dataset is neither prepared nor available from local files or the web."""


class RemoteFile(NamedTuple):
  """One original file on the web; `md5` is checked after every download."""

  url: str
  md5: str


def file_md5(path: epath.PathLike) -> str:
  """Returns the lowercase hex MD5 digest of a file, read in 1 MiB chunks."""
  digest = hashlib.md5(usedforsecurity=False)
  with epath.Path(path).open("rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def manual_dir_or_none(
  dl_manager: tfds.download.DownloadManager,
) -> epath.Path | None:
  """tfds's manual directory, or None if it is unset, absent or empty."""
  try:
    return dl_manager.manual_dir
  except AssertionError:  # tfds signals a missing or empty manual dir so.
    return None


def download_verified(
  dl_manager: tfds.download.DownloadManager,
  files: Mapping[str, RemoteFile],
) -> dict[str, epath.Path]:
  """Downloads files with tfds's download manager and checks their MD5;
  returns their local paths by the same keys.

  Raises:
    OSError: a downloaded file does not have the published MD5.
  """
  paths = dl_manager.download({key: f.url for key, f in files.items()})
  for key, remote in files.items():
    digest = file_md5(paths[key])
    if digest != remote.md5:
      raise OSError(
        f"{remote.url} was downloaded to {paths[key]} with MD5 {digest}, but"
        f" the published file has MD5 {remote.md5}. Delete {paths[key]} and"
        " retry, or prepare the dataset from a local copy of the original"
        " files (see `cure_jax.data.load_split`)."
      )
  return {key: epath.Path(path) for key, path in paths.items()}


def _server_answers(url: str, timeout_s: float) -> bool:
  """Whether the server of `url` answers an HTTP HEAD (any status) in time.

  DNS look-ups ignore `requests`' timeout and can hang for a long time, so
  the request runs in a daemon thread that is abandoned at the deadline.
  """
  answered = threading.Event()

  def probe() -> None:
    try:
      requests.head(url, timeout=timeout_s, allow_redirects=True)
      answered.set()
    except requests.RequestException:
      pass

  thread = threading.Thread(target=probe, daemon=True)
  thread.start()
  thread.join(timeout_s)
  return answered.is_set()


def unreachable_hosts(urls: Iterable[str], timeout_s: float = 5.0) -> list[str]:
  """Returns the hosts of `urls` whose server does not answer in time.

  Each host is probed once, with a HEAD request to its first URL (proxies
  configured by the usual environment variables are honoured); hosts come in
  first-seen order.
  """
  first_url_of_host: dict[str, str] = {}
  for url in urls:
    first_url_of_host.setdefault(parse.urlsplit(url).netloc, url)
  return [
    host
    for host, url in first_url_of_host.items()
    if not _server_answers(url, timeout_s)
  ]


def image_label_info(
  builder: tfds.core.DatasetBuilder,
  *,
  description: str,
  image_shape: tuple[int, ...],
  label: tfds.features.ClassLabel,
  homepage: str,
) -> tfds.core.DatasetInfo:
  """The info of a dataset of raw uint8 images, one label each, in file order.

  Args:
    builder: the builder the info describes.
    description: one paragraph on the dataset.
    image_shape: (H, W, C) of every image.
    label: the label feature.
    homepage: the dataset's home page.

  Returns:
    Features {"image": uint8 [H, W, C] stored as bytes, "label"}, supervised
    keys (image, label) and no shuffling, so the original order (and the
    test subsets taken from it) is kept.
  """
  return tfds.core.DatasetInfo(
    builder=builder,
    description=description,
    features=tfds.features.FeaturesDict(
      {
        "image": tfds.features.Tensor(
          shape=image_shape,
          dtype=np.uint8,
          encoding=tfds.features.Encoding.BYTES,
        ),
        "label": label,
      }
    ),
    supervised_keys=("image", "label"),
    disable_shuffling=True,
    homepage=homepage,
  )


class OriginalFilesBuilder(
  tfds.core.GeneratorBasedBuilder, skip_registration=True
):
  """A tfds builder fed by its dataset's original distribution files.

  Subclasses declare the published files (`REMOTE_FILES`), how to recognise a
  local copy of them (`find_local_sources`) and how to use a download
  (`sources_from_download`). `_sources` then takes the local copy from tfds's
  manual directory when it holds one, and downloads otherwise.
  """

  REMOTE_FILES: ClassVar[Mapping[str, RemoteFile]]

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """The file defining the builder (tfds looks for checksums.tsv beside it).

    tfds 4.9.10's own implementation needs the `importlib_resources`
    backport for builders outside tfds, which Python >= 3.9 does not install;
    this is its documented fallback.
    """
    return epath.Path(inspect.getfile(cls))

  @classmethod
  @abc.abstractmethod
  def find_local_sources(cls, directory: epath.Path) -> Any | None:
    """Returns the dataset's sources in `directory`, or None if incomplete."""

  @classmethod
  @abc.abstractmethod
  def sources_from_download(cls, paths: Mapping[str, epath.Path]) -> Any:
    """Returns the dataset's sources from downloaded `REMOTE_FILES` paths."""

  def _sources(self, dl_manager: tfds.download.DownloadManager) -> Any:
    """Returns the sources: the manual directory's copy, else a download."""
    manual_dir = manual_dir_or_none(dl_manager)
    if manual_dir is not None:
      local = self.find_local_sources(manual_dir)
      if local is not None:
        return local
    return self.sources_from_download(
      download_verified(dl_manager, self.REMOTE_FILES)
    )
