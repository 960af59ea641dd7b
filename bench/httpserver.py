"""A local aiohttp server that answers every GET after 100 ms.

Usage: ``python httpserver.py PORT_FILE [DELAY]``: binds 127.0.0.1 on a free port,
writes the port to PORT_FILE once it is listening, and serves until SIGTERM/SIGINT.
Runs on uvloop when it is installed, to leave more of the CPU to the queue under test.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

from aiohttp import web


async def serve(port_file: str, delay: float) -> None:
    async def handle(_request: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    await web.SockSite(runner, sock, backlog=4096).start()
    with open(port_file + ".tmp", "w") as f:
        f.write(str(sock.getsockname()[1]))
    os.replace(port_file + ".tmp", port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    try:  # the server stands in for a remote API: make it as cheap as we can
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 0.1))
