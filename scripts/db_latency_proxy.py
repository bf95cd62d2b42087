#!/usr/bin/env python3
"""A TCP proxy on loopback that delays every byte by a fixed time each way, so the benchmark can
put PostgreSQL as far from MLflow as Heroku Postgres is from a dyno (docs/benchmark.md).

Run by ``scripts/benchmark.py --db-latency-ms`` (scripts/benchmarking/database.py):
``db_latency_proxy.py LISTEN_PORT TARGET_PORT DELAY_MS``; prints ``ready`` once it accepts
connections and runs until killed. Data keeps its order: each chunk read is written DELAY_MS
after it arrived.
"""

from __future__ import annotations

import asyncio
import selectors
import sys


async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    try:
        while data := await reader.read(65536):
            loop.call_later(delay, writer.write, data)
        await asyncio.sleep(delay)  # let the last delayed write go out before closing
    finally:
        writer.close()


async def serve(listen_port: int, target_port: int, delay: float) -> None:
    async def connect(
        client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            forward(client_reader, server_writer, delay),
            forward(server_reader, client_writer, delay),
            return_exceptions=True,
        )

    server = await asyncio.start_server(connect, "127.0.0.1", listen_port)
    print("ready", flush=True)
    await server.serve_forever()


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        sys.exit("usage: db_latency_proxy.py LISTEN_PORT TARGET_PORT DELAY_MS")
    listen_port, target_port, delay_ms = int(argv[0]), int(argv[1]), float(argv[2])
    # select() sleeps to the microsecond; epoll, asyncio's default here, to the millisecond,
    # which would round a sub-millisecond delay up.
    loop = asyncio.SelectorEventLoop(selectors.SelectSelector())
    try:
        loop.run_until_complete(serve(listen_port, target_port, delay_ms / 1000))
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
