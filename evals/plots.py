"""matplotlib for the benchmarks' optional plots: imported headless, or None with a warning when not installed."""

from __future__ import annotations

import warnings


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None (with a warning saying how to get it) when it is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("plot skipped: matplotlib is not installed (pip install matplotlib)", stacklevel=3)
        return None
    return plt


def save(fig, path: str) -> None:
    """Write the figure as a PNG and free it."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
