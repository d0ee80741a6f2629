"""The App the CLI acceptance tests run with ``tether worker cliapp:app``.

``app`` is built with no URL, so it reads ``TETHER_DATABASE_URL`` when the worker imports
it; the tests build their own App on the same file with ``build_app(url)`` to start runs
from another process.
"""

from __future__ import annotations

from tether import App, Context


def build_app(database_url: str | None = None) -> App:
    app = App(database_url)

    @app.step
    async def greet(name: str) -> str:
        return f"hello {name}"

    @app.step
    def double(n: int) -> int:
        return 2 * n

    @app.workflow
    async def quick(ctx: Context, n: int) -> int:
        return await double(await double(n))

    @app.workflow
    async def waits_for_go(ctx: Context, name: str) -> dict[str, object]:
        greeting = await greet(name)
        value = await ctx.wait_signal("go")
        return {"greeting": greeting, "go": value}

    return app


app = build_app()
not_an_app = build_app  # for the test of a MODULE:APP that names something else
