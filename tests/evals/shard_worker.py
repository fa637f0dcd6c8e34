"""Work for each process torchrun starts in tests/evals/test_eval_shard.py.

`shard_worker.py chunks OUT`: run_chunks over 10 items in chunks of 3 with a work function that records which
process did what; rank 0 writes the gathered records to OUT. `shard_worker.py cli JSON`: run the accel CLI commands
in JSON (a list of argument lists) one after another, so one launch pays for the start-up once."""

import json
import sys

if __name__ == "__main__":
    if sys.argv[1] == "chunks":
        from accel.evals.shard import Shard, run_chunks

        shard = Shard.from_env()
        records = run_chunks(10, 3, lambda idx: {"rows": [i * i for i in idx], "rank": shard.rank}, shard)
        if shard.main:
            with open(sys.argv[2], "w") as f:
                json.dump([{k: v for k, v in r.items() if k != "seconds"} for r in records], f)
    else:
        from accel.cli.main import app

        for args in json.loads(sys.argv[2]):
            code = app(args, standalone_mode=False)
            if code:
                sys.exit(code)
