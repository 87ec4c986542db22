"""Training job entrypoint, submitted to a Ray cluster by the training service (Ray Job Submission API).

    python ray_jobs/train.py --config job.json

`job.json` holds `{"train": {...TrainConfig fields...}, "scaling": {...Scaling fields...},
"storage_path": "...", "name": "..."}`. The recipe is thin: the work is in `tuneforge.training`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True, help="job JSON written by the training service")
    args = parser.parse_args()
    job = json.loads(Path(args.config).read_text())

    from tuneforge.training.ray_train import Scaling, run_with_ray

    result = run_with_ray(job["train"], Scaling(**job.get("scaling", {})), job["storage_path"], job["name"])
    print(
        json.dumps(
            {
                "event": "finished",
                "metrics": result.metrics,
                "checkpoint": result.checkpoint.path if result.checkpoint else None,
            }
        ),
        flush=True,
    )
    return 0 if result.error is None else 1


if __name__ == "__main__":
    sys.exit(main())
