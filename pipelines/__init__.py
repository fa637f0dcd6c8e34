"""accel.pipelines: per-family Denoiser adapters and the built-in pipelines.

Importing the package registers the built-in models with accel.kernels.apply_fused_kernels (imports point from the
models to the kernels, never back).
"""


def _register_fused_kernels() -> None:
    from accel.kernels.fused import register_fused_installer
    from accel.pipelines.shapes import ShapesTransformer2DModel
    from accel.pipelines.shapes_kernels import install_fused_kernels

    register_fused_installer(ShapesTransformer2DModel, install_fused_kernels)


if __name__ != "accel.pipelines":  # a bare `import pipelines` from the repository root: accel/_rootpath.py
    from accel._rootpath import load_installed

    load_installed(__name__)
else:
    _register_fused_kernels()
