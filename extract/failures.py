"""`failures.jsonl`: one JSON line per bad clip or row, appended by resize, extract and fine-tuning."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)


def append_failures(path: Path | str, records: Sequence[dict]) -> None:
    """Append `records` (each stamped with `time` unless it has one) in a single write.

    One write per call, so concurrent shards append whole lines. On a full disk the records are logged
    instead, so the error that stopped the run stays the one raised.
    """
    if not records:
        return
    path = Path(path)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    lines = "".join(json.dumps({"time": stamp, **rec}, sort_keys=True) + "\n" for rec in records)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(lines)
    except OSError as err:
        log.error("cannot append %d failure records to %s (%s); they were:\n%s", len(records), path, err, lines)
