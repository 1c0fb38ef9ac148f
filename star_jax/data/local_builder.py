"""What the TFDS builders of star_jax.data share: local input only (nothing is downloaded) and array_record
output, the only TFDS file format that is written and read (`builder.as_data_source(split)`) without
TensorFlow.
"""

from __future__ import annotations

import abc
import dataclasses
import os
from typing import Any, ClassVar, TypeVar

import tensorflow_datasets as tfds
from etils import epath

from star_jax.data.jsonl import file_fingerprint

FILE_FORMAT = "array_record"

BuilderT = TypeVar("BuilderT", bound=tfds.core.DatasetBuilder)


class ArrayRecordBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A generator-based builder at version 1.0.0 that writes array_record unless given another file_format."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  # TFDS's own code_path needs the `importlib_resources` backport (not installed) for any builder defined
  # in a package; this is the value its fallback would give. TFDS uses only its directory (where it looks
  # for checksums.tsv), the same for every builder in this package.
  code_path = epath.Path(__file__)

  def __init__(self, **kwargs) -> None:
    kwargs.setdefault("file_format", FILE_FORMAT)
    super().__init__(**kwargs)


def prepare(builder: BuilderT, *, manual_dir: str | os.PathLike | None = None) -> BuilderT:
  """Writes the builder's dataset as array_record if it is not there yet (no network); returns `builder`."""
  download_config = tfds.download.DownloadConfig(
      try_download_gcs=False, manual_dir=None if manual_dir is None else os.fspath(manual_dir))
  builder.download_and_prepare(download_config=download_config, file_format=FILE_FORMAT)
  return builder


@dataclasses.dataclass(eq=False)
class LocalFilesConfig(tfds.core.BuilderConfig):
  """Local JSONL files, one per split; `name` defaults to `files_<fingerprint of their contents>`.

  Edited files thus build into a new directory instead of silently reusing stale data. A subclass names its
  dataset (DATASET, TRAIN_FILE: for messages) and lists its SPLITS, each with a field `<split>_path`
  ("" = no such split).
  """

  DATASET: ClassVar[str] = ""  # "GSM8K"
  TRAIN_FILE: ClassVar[str] = "JSONL"  # what train_path is: 'a local <DATASET> <TRAIN_FILE>'
  SPLITS: ClassVar[tuple[str, ...]] = ("train",)

  name: str = ""
  train_path: str = ""  # required

  def __post_init__(self) -> None:
    if not self.train_path:
      raise ValueError(f"{type(self).__name__}: train_path is required (a local {self.DATASET} {self.TRAIN_FILE})")
    for path in self.paths().values():
      if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found ({self.DATASET} JSONL expected; nothing is downloaded)")
    if not self.name:
      self.name = f"files_{file_fingerprint(self.paths())}"

  def paths(self) -> dict[str, str]:
    """{split name: path} of the files given, in SPLITS order."""
    return {split: os.fspath(path) for split in self.SPLITS if (path := getattr(self, f"{split}_path"))}


class LocalFilesBuilder(ArrayRecordBuilder, skip_registration=True):
  """An ArrayRecordBuilder with a LocalFilesConfig: one split per file, every file parsed before any write."""

  @abc.abstractmethod
  def _read_split(self, split: str, path: str) -> Any:
    """The parsed file of one split (raising on malformed input), for `_generate_examples`."""

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # nothing to download
    paths = self.builder_config.paths()
    parsed = {split: self._read_split(split, path) for split, path in paths.items()}  # all, before any write
    return {split: self._generate_examples(examples) for split, examples in parsed.items()}
