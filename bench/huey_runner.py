"""Run huey's consumer (``huey.create_consumer``) on hueyapp's SqliteHuey.

With ``--target N`` it starts the consumer, waits until N tasks have finished (the
shared counter in hueyapp), writes ``{"done_at", "first", "last", "count"}`` to
``--out`` and stops the consumer gracefully.  Without a target it runs like
``huey_consumer`` until SIGINT (graceful stop).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

import hueyapp


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--worker-type", default="thread", choices=["thread", "process"])
    ap.add_argument("--delay", type=float, default=0.1, help="huey's -d (initial poll delay)")
    ap.add_argument("--backoff", type=float, default=1.15, help="huey's -b")
    ap.add_argument("--max-delay", type=float, default=10.0, help="huey's -m")
    ap.add_argument("--target", type=int, default=0)
    ap.add_argument("--out")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    consumer = hueyapp.huey.create_consumer(
        workers=args.workers,
        worker_type=args.worker_type,
        periodic=False,
        initial_delay=args.delay,
        backoff=args.backoff,
        max_delay=args.max_delay,
    )
    if not args.target:
        consumer.run()
        return
    consumer.start()
    done = hueyapp.done
    while done.value < args.target:
        time.sleep(0.002)
    result = {
        "done_at": time.time(),
        "first": hueyapp.first.value,
        "last": hueyapp.last.value,
        "count": done.value,
        "errors": hueyapp.errors.value,
    }
    # write then rename: the bench polls for the file and must never read it half-written
    with open(args.out + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(args.out + ".tmp", args.out)
    consumer.stop(graceful=True)


if __name__ == "__main__":
    main()
