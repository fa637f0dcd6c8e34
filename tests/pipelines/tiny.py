"""The tiny Flux / SD3 / Wan builders live in accel.pipelines.tiny (the overhead benchmark builds them too). This
module stays for the tests outside tests/pipelines that put this folder on sys.path and import `tiny`."""

from accel.pipelines.tiny import build_flux, build_sd3, build_wan, kl_vae  # noqa: F401
