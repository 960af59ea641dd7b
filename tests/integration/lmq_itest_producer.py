"""A producer process for the integration tests: ``python -m lmq_itest_producer START COUNT``.

Enqueues ``record`` tasks with keys START..START+COUNT-1 into ``$LMQ_URL``, mixing
``enqueue_many`` batches and single ``enqueue`` calls with short pauses, so that it keeps
writing while workers drain the same SQLite file.  Exits 0 when everything is stored.
"""

from __future__ import annotations

import sys
import time

import lmq


def main() -> int:
    start, count = int(sys.argv[1]), int(sys.argv[2])
    keys = list(range(start, start + count))
    with lmq.Queue() as queue:
        i = 0
        while i < len(keys):
            if (i // 100) % 2 == 0:
                batch = keys[i : i + 100]
                queue.enqueue_many([("record", {"n": k}) for k in batch])
                i += len(batch)
            else:
                for k in keys[i : i + 20]:
                    queue.enqueue("record", {"n": k})
                i += len(keys[i : i + 20])
            time.sleep(0.01)
    return 0


if __name__ == "__main__":
    sys.exit(main())
