"""accel.evals: the built-in benchmarks, speed / quality runners and atomic results files."""

if __name__ != "accel.evals":  # a bare `import evals` from the repository root: accel/_rootpath.py
    from accel._rootpath import load_installed

    load_installed(__name__)
