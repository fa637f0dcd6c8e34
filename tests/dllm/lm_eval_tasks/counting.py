"""The local data set of the accel_counting tasks: counting.jsonl beside this file (answers of the
built-in counting task, accel.dllm.task; tests/dllm/test_lm_eval.py checks them against it)."""

from pathlib import Path


def load(**metadata):
    """lm-eval's custom_dataset hook; it passes the run's metadata (model args among them), which a fixed local
    file does not need."""
    import datasets

    return datasets.load_dataset("json", data_files={"test": str(Path(__file__).with_name("counting.jsonl"))})
