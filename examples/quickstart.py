"""The README example: a durable workflow with steps, a durable sleep and a signal."""

import asyncio

from tether import App, Context

app = App("sqlite:///quickstart.db")


@app.step(retries=3)
async def fetch_order(order_id: str) -> dict[str, int]:
    return {"order_id": int(order_id), "amount": 42}


@app.step
def charge(amount: int) -> str:  # sync bodies run off the event loop
    return f"charged {amount}"


@app.workflow
async def process(ctx: Context, order_id: str) -> str:
    order = await fetch_order(order_id)
    await ctx.sleep(1)  # durable: survives restarts, holds no thread
    approved = await ctx.wait_signal("approve")  # sent by app.signal or `tether signal`
    return await charge(order["amount"]) if approved else "declined"


async def main() -> None:
    async with app:  # opens storage, starts the worker, resumes interrupted runs
        handle = await app.start(process, "7", run_id="order-7")  # idempotent on run_id
        await app.signal("order-7", "approve", True)  # kept in the mailbox until awaited
        print(await handle.result(timeout=60))


if __name__ == "__main__":
    asyncio.run(main())
