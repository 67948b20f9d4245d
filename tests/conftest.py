"""Shared pytest setup: absl flags are marked parsed so library code that reads them works under pytest."""

from absl import flags

flags.FLAGS.mark_as_parsed()
