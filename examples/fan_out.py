"""Parallel steps, recorded randomness and child runs."""

import asyncio

from tether import App, Context

app = App("sqlite:///fan_out.db")


@app.step
async def score(item: str) -> int:
    return len(item)


@app.workflow
async def review(ctx: Context, item: str) -> dict[str, int | str]:
    # A child run is a run of its own: any worker may execute it.
    return {"item": item, "score": await score(item)}


@app.workflow
async def batch(ctx: Context, items: list[str]) -> dict[str, object]:
    # gather numbers its calls in argument order, so replay is exact.
    scores = await asyncio.gather(*(score(i) for i in items))
    reviews = await asyncio.gather(*(ctx.child(review, i) for i in items))
    batch_id = await ctx.uuid()  # recorded: the same UUID on every replay
    return {"batch": str(batch_id), "total": sum(scores), "reviews": reviews}


async def main() -> None:
    async with app:
        handle = await app.start(batch, ["alpha", "beta", "gamma"])
        print(await handle.result(timeout=60))


if __name__ == "__main__":
    asyncio.run(main())
