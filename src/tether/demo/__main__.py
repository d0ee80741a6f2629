"""``python -m tether.demo --worker DATABASE_URL LEDGER``: one worker process of the demo.

It serves the demo's App until SIGTERM (or until the demo kills it with SIGKILL).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from ._ops import build_app


def _worker_main(database_url: str, ledger: str) -> None:
    app = build_app(database_url, Path(ledger))

    async def serve() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with app:
            await stop.wait()

    asyncio.run(serve())


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        _worker_main(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: python -m tether.demo --worker DATABASE_URL LEDGER")
