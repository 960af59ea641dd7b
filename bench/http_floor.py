"""The HTTP workload without a queue: N GETs, at most C at once, from one aiohttp session.

Usage: ``python http_floor.py URL N C``; prints the seconds from the first request to
the last response.  It shows what the machine (client, server, loopback) allows before
any queue is involved.
"""

from __future__ import annotations

import asyncio
import sys
import time

import aiohttp


async def run(url: str, n: int, concurrency: int) -> float:
    sem = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=1000)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            async with sem, session.get(url) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}")

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return time.perf_counter() - start


if __name__ == "__main__":
    print(asyncio.run(run(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
