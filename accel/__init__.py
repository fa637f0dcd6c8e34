"""accel: faster and better diffusion / flow-matching generation at a fixed compute budget.

    from accel import accelerate_pipeline
    pipe = accelerate_pipeline(pipe)   # same outputs for the same seed; out.stats has NFE and seconds
"""

from accel.api import AcceleratedPipeline, Stats, accelerate_pipeline
from accel.config import AccelConfig
from accel.models import builtin_model_path, load_pipeline

__version__ = "0.1.0"

__all__ = ["AccelConfig", "AcceleratedPipeline", "Stats", "accelerate_pipeline", "builtin_model_path",
           "load_pipeline", "__version__"]
