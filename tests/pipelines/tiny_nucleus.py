"""The tiny Nucleus builders live in accel.pipelines.tiny_nucleus (the overhead benchmark builds them too). This
module stays for the tests outside tests/pipelines that put this folder on sys.path and import `tiny_nucleus`."""

from accel.pipelines.tiny_nucleus import build_nucleus, transformer  # noqa: F401
