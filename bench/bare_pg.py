"""The floor/ceiling reference on PostgreSQL: a bare asyncio loop, no queue library.

    python bench/bare_pg.py DSN OUT_DIR

Claims 500 rows of ``bare_tasks`` with ``FOR UPDATE SKIP LOCKED``, runs an ``async def``
no-op for each (payload decoded), marks the 500 done in one statement, and repeats until a
claim comes back empty; then writes OUT_DIR/result.json (first and last task, count).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import psycopg

SCHEMA = """
CREATE TABLE IF NOT EXISTS bare_tasks (
    id bigserial PRIMARY KEY, payload text NOT NULL, status smallint NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS bare_tasks_ready ON bare_tasks (id) WHERE status = 0;
"""
CLAIM = """UPDATE bare_tasks SET status = 1 WHERE id IN (
    SELECT id FROM bare_tasks WHERE status = 0 ORDER BY id LIMIT 500 FOR UPDATE SKIP LOCKED)
RETURNING id, payload"""
ACK = "UPDATE bare_tasks SET status = 2 WHERE id = ANY(%s)"
span = [0.0, 0.0, 0]


async def noop(n: int) -> None:
    now = time.time()
    span[0] = span[0] or now
    span[1] = now
    span[2] += 1


async def main(dsn: str, out: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while rows := await (await conn.execute(CLAIM)).fetchall():
            await asyncio.gather(*(noop(**json.loads(p)) for _, p in rows))
            await conn.execute(ACK, ([r[0] for r in rows],))
    with open(f"{out}/result.json.tmp", "w") as f:  # renamed: the bench polls for it
        json.dump({"first": span[0], "last": span[1], "count": span[2], "latencies": []}, f)
    os.replace(f"{out}/result.json.tmp", f"{out}/result.json")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
