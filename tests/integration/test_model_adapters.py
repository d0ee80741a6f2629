"""The OpenAI and Anthropic adapters against local fake servers that speak each provider's
wire format: the real SDKs make real HTTP requests, the fakes record what arrived.

First each adapter alone (``await model.request(...)``): the wire format it sends, the
answer it reads back, usage and cost, and how each failure maps to a ``_model`` error.
Then agents on both backends: a tool call and a final answer recorded in the journal, a
429 asked again by the runtime, a 401 not asked again.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

import tether
from fakes import FakeAnthropic, FakeOpenAI, Reply
from tether import App, Context, Effect, RunFailedError
from tether.agent import (
    Agent,
    AnthropicModel,
    Message,
    ModelAuthError,
    ModelRequest,
    ModelRequestError,
    ModelUnavailableError,
    OpenAIModel,
    Price,
    ToolCall,
    ToolSpec,
)
from tether.agent._provider import retry_after

KEY = "sk-test-7f3a9c-do-not-log"
POLL = 0.05

WEATHER = ToolSpec(
    name="weather",
    description="The weather in a city.",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
)


@pytest.fixture
def openai_fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def anthropic_fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
async def openai(openai_fake: FakeOpenAI) -> AsyncIterator[OpenAIModel]:
    async with OpenAIModel("gpt-test", api_key=KEY, base_url=openai_fake.base_url) as model:
        yield model


@pytest.fixture
async def claude(anthropic_fake: FakeAnthropic) -> AsyncIterator[AnthropicModel]:
    async with AnthropicModel(
        "claude-test-1", api_key=KEY, base_url=anthropic_fake.base_url
    ) as model:
        yield model


def ask(*messages: Message, tools: tuple[ToolSpec, ...] = (), **settings: Any) -> ModelRequest:
    return ModelRequest(messages=messages, tools=tools, settings=settings)


def bearer_or_api_key(headers: dict[str, str]) -> str | None:
    """The key as an Anthropic SDK sends it (``x-api-key``, or a bearer token)."""
    if "x-api-key" in headers:
        return headers["x-api-key"]
    auth = headers.get("authorization", "")
    return auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None


# -- OpenAI: wire format


async def test_openai_text_answer_and_what_was_sent(
    openai_fake: FakeOpenAI, openai: OpenAIModel
) -> None:
    openai_fake.queue(openai_fake.completion("Paris.", usage=(31, 2)))
    response = await openai.request(
        ask(Message.system("Be brief."), Message.user("Capital of France?"), temperature=0.2)
    )
    assert response.message == Message.assistant("Paris.")
    assert response.stop_reason == "end_turn"
    assert response.model == "gpt-test-2024"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (31, 2)
    [sent] = openai_fake.requests
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers.get("x-stainless-retry-count") in (None, "0")
    assert sent.body == {
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of France?"},
        ],
        "temperature": 0.2,
    }


async def test_openai_parallel_tool_calls_and_tool_schema(
    openai_fake: FakeOpenAI, openai: OpenAIModel
) -> None:
    openai_fake.queue(
        openai_fake.completion(
            None,
            ("call_a", "weather", {"city": "Paris"}),
            ("call_b", "weather", {"city": "Oslo"}),
        )
    )
    response = await openai.request(ask(Message.user("Paris and Oslo?"), tools=(WEATHER,)))
    assert response.message.tool_calls == (
        ToolCall(id="call_a", name="weather", arguments={"city": "Paris"}),
        ToolCall(id="call_b", name="weather", arguments={"city": "Oslo"}),
    )
    assert response.message.content is None
    assert response.stop_reason == "tool_calls"
    assert openai_fake.bodies[0]["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "The weather in a city.",
                "parameters": WEATHER.parameters,
            },
        }
    ]


async def test_openai_tool_results_round_trip(openai_fake: FakeOpenAI, openai: OpenAIModel) -> None:
    openai_fake.queue(openai_fake.completion("Sunny in Paris; Oslo is unknown."))
    response = await openai.request(
        ask(
            Message.user("Paris and Oslo?"),
            Message.assistant(
                "Looking.",
                ToolCall(id="call_a", name="weather", arguments={"city": "Paris"}),
                ToolCall(id="call_b", name="weather", arguments={"city": "Oslo"}),
            ),
            Message.tool("call_a", '"sunny"'),
            Message.tool("call_b", "no station in Oslo", is_error=True),
            tools=(WEATHER,),
        )
    )
    assert response.message.content == "Sunny in Paris; Oslo is unknown."
    messages = openai_fake.bodies[0]["messages"]
    assistant = messages[1]
    assert assistant["role"] == "assistant" and assistant["content"] == "Looking."
    assert [(c["id"], c["type"], c["function"]["name"]) for c in assistant["tool_calls"]] == [
        ("call_a", "function", "weather"),
        ("call_b", "function", "weather"),
    ]
    # Arguments travel as JSON text.
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert messages[2:] == [
        {"role": "tool", "tool_call_id": "call_a", "content": '"sunny"'},
        {"role": "tool", "tool_call_id": "call_b", "content": "Error: no station in Oslo"},
    ]


async def test_openai_unparsable_arguments_are_kept_and_sent_back_as_written(
    openai_fake: FakeOpenAI, openai: OpenAIModel
) -> None:
    broken = '{"city": "Par'
    openai_fake.queue(
        openai_fake.completion(None, ("call_x", "weather", broken), ("call_y", "weather", "")),
        openai_fake.completion("ok"),
    )
    first = await openai.request(ask(Message.user("Paris?"), tools=(WEATHER,)))
    bad, empty = first.message.tool_calls
    assert bad.arguments == {"_raw": broken}
    assert empty.arguments == {}
    await openai.request(
        ask(
            Message.user("Paris?"),
            first.message,
            Message.tool("call_x", "invalid arguments", is_error=True),
            Message.tool("call_y", "invalid arguments", is_error=True),
            tools=(WEATHER,),
        )
    )
    replayed = openai_fake.bodies[1]["messages"][1]["tool_calls"]
    assert replayed[0]["function"]["arguments"] == broken
    assert json.loads(replayed[1]["function"]["arguments"]) == {}


async def test_openai_settings_merge_and_reserved_names(openai_fake: FakeOpenAI) -> None:
    model = OpenAIModel(
        "gpt-test",
        api_key=KEY,
        base_url=openai_fake.base_url,
        settings={"temperature": 0.0, "seed": 7, "max_tokens": 50},
    )
    async with model:
        openai_fake.queue(openai_fake.completion("hi"))
        await model.request(ask(Message.user("hi"), temperature=0.5))
        with pytest.raises(ModelRequestError, match="stream"):
            await model.request(ask(Message.user("hi"), stream=True))
    body = openai_fake.bodies[0]
    assert (body["temperature"], body["seed"], body["max_tokens"]) == (0.5, 7, 50)
    assert len(openai_fake.requests) == 1  # the refused settings were never sent
    with pytest.raises(Exception, match="messages"):
        OpenAIModel("gpt-test", api_key=KEY, settings={"messages": []})


async def test_openai_usage_and_cost(openai_fake: FakeOpenAI) -> None:
    priced = OpenAIModel(
        "gpt-test", api_key=KEY, base_url=openai_fake.base_url, price=Price(2.5, 10.0)
    )
    async with priced:
        openai_fake.queue(openai_fake.completion("hi", usage=(1000, 200)))
        response = await priced.request(ask(Message.user("hi")))
    assert response.usage.total_tokens == 1200
    assert priced.cost_usd(response.usage) == pytest.approx(1000 * 2.5e-6 + 200 * 10e-6)
    assert OpenAIModel("gpt-test", api_key=KEY).cost_usd(response.usage) == 0.0
    assert OpenAIModel("gpt-test").name == "openai:gpt-test"


# -- Anthropic: wire format


async def test_anthropic_text_answer_system_placement_and_max_tokens(
    anthropic_fake: FakeAnthropic, claude: AnthropicModel
) -> None:
    anthropic_fake.queue(anthropic_fake.message("Paris.", usage=(40, 3)))
    response = await claude.request(
        ask(
            Message.system("Be brief."),
            Message.system("Answer in English."),
            Message.user("Capital of France?"),
            temperature=0.2,
        )
    )
    assert response.message == Message.assistant("Paris.")
    assert response.stop_reason == "end_turn"
    assert response.model == "claude-test-1"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (40, 3)
    [sent] = anthropic_fake.requests
    assert sent.path == "/v1/messages"
    assert bearer_or_api_key(sent.headers) == KEY
    assert "anthropic-version" in sent.headers
    assert sent.body == {
        "model": "claude-test-1",
        "max_tokens": 4096,
        "system": "Be brief.\n\nAnswer in English.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]}],
        "temperature": 0.2,
    }


async def test_anthropic_max_tokens_from_settings(anthropic_fake: FakeAnthropic) -> None:
    model = AnthropicModel(
        "claude-test-1", api_key=KEY, base_url=anthropic_fake.base_url, max_tokens=1000
    )
    async with model:
        anthropic_fake.queue(anthropic_fake.message("a"), anthropic_fake.message("b"))
        await model.request(ask(Message.user("hi")))
        await model.request(ask(Message.user("hi"), max_tokens=64))
    assert [body["max_tokens"] for body in anthropic_fake.bodies] == [1000, 64]
    assert "system" not in anthropic_fake.bodies[0]  # no system message, no parameter


async def test_anthropic_parallel_tool_use_and_tool_schema(
    anthropic_fake: FakeAnthropic, claude: AnthropicModel
) -> None:
    anthropic_fake.queue(
        anthropic_fake.message(
            "Checking both.",
            ("toolu_a", "weather", {"city": "Paris"}),
            ("toolu_b", "weather", {"city": "Oslo"}),
        )
    )
    response = await claude.request(ask(Message.user("Paris and Oslo?"), tools=(WEATHER,)))
    assert response.message.content == "Checking both."
    assert response.message.tool_calls == (
        ToolCall(id="toolu_a", name="weather", arguments={"city": "Paris"}),
        ToolCall(id="toolu_b", name="weather", arguments={"city": "Oslo"}),
    )
    assert response.stop_reason == "tool_calls"
    assert anthropic_fake.bodies[0]["tools"] == [
        {
            "name": "weather",
            "description": "The weather in a city.",
            "input_schema": WEATHER.parameters,
        }
    ]


async def test_anthropic_tool_results_merge_into_one_user_message(
    anthropic_fake: FakeAnthropic, claude: AnthropicModel
) -> None:
    anthropic_fake.queue(anthropic_fake.message("Sunny in Paris."))
    await claude.request(
        ask(
            Message.system("You report weather."),
            Message.user("Paris and Oslo?"),
            Message.assistant(
                "Checking both.",
                ToolCall(id="toolu_a", name="weather", arguments={"city": "Paris"}),
                ToolCall(id="toolu_b", name="weather", arguments={"city": "Oslo"}),
            ),
            Message.tool("toolu_a", '"sunny"'),
            Message.tool("toolu_b", "no station in Oslo", is_error=True),
            tools=(WEATHER,),
        )
    )
    body = anthropic_fake.bodies[0]
    assert body["system"] == "You report weather."
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Paris and Oslo?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking both."},
                {
                    "type": "tool_use",
                    "id": "toolu_a",
                    "name": "weather",
                    "input": {"city": "Paris"},
                },
                {"type": "tool_use", "id": "toolu_b", "name": "weather", "input": {"city": "Oslo"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_a", "content": '"sunny"'},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_b",
                    "content": "no station in Oslo",
                    "is_error": True,
                },
            ],
        },
    ]


async def test_anthropic_usage_counts_cached_input_and_prices_it(
    anthropic_fake: FakeAnthropic,
) -> None:
    model = AnthropicModel(
        "claude-test-1", api_key=KEY, base_url=anthropic_fake.base_url, price=Price(3.0, 15.0)
    )
    async with model:
        anthropic_fake.queue(anthropic_fake.message("hi", usage=(100, 50), cache=(20, 1000)))
        response = await model.request(ask(Message.user("hi")))
    assert (response.usage.input_tokens, response.usage.output_tokens) == (1120, 50)
    assert model.cost_usd(response.usage) == pytest.approx((1120 * 3.0 + 50 * 15.0) / 1e6)
    assert model.name == "anthropic:claude-test-1"


# -- Both: failures


@dataclass
class Side:
    """One provider: its fake, a model on it, and how it words an answer."""

    name: str
    fake: FakeOpenAI | FakeAnthropic
    model: OpenAIModel | AnthropicModel

    def ok(self, text: str = "ok") -> Reply:
        if isinstance(self.fake, FakeOpenAI):
            return self.fake.completion(text)
        return self.fake.message(text)


@pytest.fixture(params=["openai", "anthropic"])
async def side(request: pytest.FixtureRequest) -> AsyncIterator[Side]:
    fake: FakeOpenAI | FakeAnthropic
    model: OpenAIModel | AnthropicModel
    with FakeOpenAI() if request.param == "openai" else FakeAnthropic() as fake:
        if isinstance(fake, FakeOpenAI):
            model = OpenAIModel("gpt-test", api_key=KEY, base_url=fake.base_url)
        else:
            model = AnthropicModel("claude-test-1", api_key=KEY, base_url=fake.base_url)
        async with model:
            yield Side(request.param, fake, model)


HELLO = ask(Message.user("hello"))


async def test_429_is_unavailable_with_retry_after_and_the_sdk_does_not_retry(
    side: Side,
) -> None:
    side.fake.queue(side.fake.error(429, "Rate limit reached", {"retry-after": "7"}))
    with pytest.raises(ModelUnavailableError) as raised:
        await side.model.request(HELLO)
    assert raised.value.retry_after == 7.0
    assert "429" in str(raised.value) and "Rate limit reached" in str(raised.value)
    assert len(side.fake.requests) == 1  # max_retries=0: the runtime decides


async def test_retry_after_ms_wins_over_retry_after(side: Side) -> None:
    side.fake.queue(
        side.fake.error(429, "slow down", {"retry-after-ms": "1500", "retry-after": "2"})
    )
    with pytest.raises(ModelUnavailableError) as raised:
        await side.model.request(HELLO)
    assert raised.value.retry_after == 1.5


async def test_retry_after_as_an_http_date(side: Side) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    side.fake.queue(side.fake.error(429, "slow down", {"retry-after": when}))
    with pytest.raises(ModelUnavailableError) as raised:
        await side.model.request(HELLO)
    assert raised.value.retry_after is not None and 25 <= raised.value.retry_after <= 30


@pytest.mark.parametrize("status", [500, 502, 503, 529, 408])
async def test_server_errors_and_overload_are_unavailable(side: Side, status: int) -> None:
    side.fake.queue(side.fake.error(status, "Overloaded"))
    with pytest.raises(ModelUnavailableError) as raised:
        await side.model.request(HELLO)
    assert raised.value.retry_after is None
    assert f"HTTP {status}" in str(raised.value)
    assert len(side.fake.requests) == 1


async def test_a_non_json_error_body_is_quoted(side: Side) -> None:
    side.fake.queue(Reply(502, "<html>Bad Gateway</html>", {"content-type": "text/html"}))
    with pytest.raises(ModelUnavailableError, match="Bad Gateway"):
        await side.model.request(HELLO)


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_errors_name_the_provider_and_url_but_never_the_key(
    side: Side, status: int
) -> None:
    # Some providers quote the key they refused: it must not reach the journal or logs.
    side.fake.queue(side.fake.error(status, f"Incorrect API key provided: {KEY}."))
    with pytest.raises(ModelAuthError) as raised:
        await side.model.request(HELLO)
    text = str(raised.value)
    assert KEY not in text and KEY not in repr(raised.value.fields)
    assert "API key" in text and side.fake.base_url in text
    assert ("OpenAI" if side.name == "openai" else "Anthropic") in text
    assert "Incorrect API key provided" in text


@pytest.mark.parametrize("status", [400, 404, 422])
async def test_request_errors_carry_the_providers_message(side: Side, status: int) -> None:
    side.fake.queue(side.fake.error(status, "tools.0.name: String should match pattern"))
    with pytest.raises(ModelRequestError) as raised:
        await side.model.request(HELLO)
    assert "tools.0.name: String should match pattern" in str(raised.value)
    assert raised.value.status == status  # type: ignore[attr-defined]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed: nothing listens there


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_connection_refused_is_unavailable(provider: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    model = (
        OpenAIModel("gpt-test", api_key=KEY, base_url=url + "/v1")
        if provider == "openai"
        else AnthropicModel("claude-test-1", api_key=KEY, base_url=url)
    )
    async with model:
        with pytest.raises(ModelUnavailableError, match="cannot reach") as raised:
            await model.request(HELLO)
    assert url in str(raised.value)


async def test_a_slow_provider_times_out_as_unavailable(side: Side) -> None:
    side.model.timeout = 0.3
    side.fake.queue(Reply(200, side.ok().body, delay=1.5))
    with pytest.raises(ModelUnavailableError, match=r"did not answer within 0\.3 s"):
        await side.model.request(HELLO)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_missing_key_is_a_clear_auth_error_before_any_request(
    provider: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with FakeOpenAI() if provider == "openai" else FakeAnthropic() as fake:
        model = (
            OpenAIModel("gpt-test", base_url=fake.base_url)
            if isinstance(fake, FakeOpenAI)
            else AnthropicModel("claude-test-1", base_url=fake.base_url)
        )
        with pytest.raises(ModelAuthError) as raised:
            await model.request(HELLO)
        assert fake.requests == []
        # The key is looked up at the first request: set later, it is found.
        env = "OPENAI_API_KEY" if provider == "openai" else "ANTHROPIC_API_KEY"
        assert env in str(raised.value) and "api_key=" in str(raised.value)
        monkeypatch.setenv(env, KEY)
        fake.queue(fake.completion("hi") if isinstance(fake, FakeOpenAI) else fake.message("hi"))
        async with model:
            assert (await model.request(HELLO)).message.content == "hi"
        assert bearer_or_api_key(fake.requests[0].headers) == KEY


async def test_a_client_handed_in_has_its_retries_turned_off_and_stays_open(
    openai_fake: FakeOpenAI,
) -> None:
    import openai as sdk

    client = sdk.AsyncOpenAI(api_key=KEY, base_url=openai_fake.base_url, max_retries=5)
    async with OpenAIModel("gpt-test", client=client) as model:
        openai_fake.queue(openai_fake.error(503, "busy"))
        with pytest.raises(ModelUnavailableError):
            await model.request(HELLO)
        assert len(openai_fake.requests) == 1
    # Closing the model left the caller's client open, and the model still uses it.
    openai_fake.queue(openai_fake.completion("still here"), openai_fake.completion("me too"))
    completion = await client.chat.completions.create(model="gpt-test", messages=[])
    assert completion.choices[0].message.content == "still here"
    assert (await model.request(HELLO)).message.content == "me too"
    await client.close()


def test_tether_agent_imports_without_the_sdks() -> None:
    """The SDKs are optional extras: without them ``tether.agent`` imports, and asking
    for an adapter says which extra to install."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["openai"] = None  # as if not installed
        sys.modules["anthropic"] = None
        import tether, tether.agent
        from tether.agent import Agent, Price, ScriptedModel
        for name, extra in [("OpenAIModel", "openai"), ("AnthropicModel", "anthropic")]:
            try:
                getattr(tether.agent, name)
            except ImportError as exc:
                assert f"pip install 'tether[{extra}]'" in str(exc), exc
            else:
                raise AssertionError(name + " imported without its SDK")
        print("ok")
        """
    )
    src = str(Path(tether.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}

    def run(code: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert run(code) == "ok"
    # And with the SDKs installed, importing tether.agent still does not load them.
    loaded = "import sys, tether.agent; print('openai' in sys.modules, 'anthropic' in sys.modules)"
    assert run(loaded) == "False False"


def test_retry_after_parsing() -> None:
    now = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after({"retry-after": "12"}) == 12.0
    assert retry_after({"retry-after": "0.5"}) == 0.5
    assert retry_after({"retry-after-ms": "250"}) == 0.25
    assert retry_after({"retry-after": "Sat, 01 Mar 2025 12:00:42 GMT"}, now=now) == 42.0
    assert retry_after({"retry-after": "Sat, 01 Mar 2025 11:00:00 GMT"}, now=now) == 0.0
    assert retry_after({"retry-after": "-3"}) == 0.0
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({}) is None


# -- Agents on both backends


def build(db_url: str, model: Any, **options: Any) -> tuple[App, list[str]]:
    app = App(db_url, poll_interval=POLL)
    asked: list[str] = []

    @app.tool(effect=Effect.READ)
    async def weather(city: str) -> dict[str, Any]:
        """The weather in a city."""
        asked.append(city)
        return {"city": city, "sky": "sunny", "celsius": 21}

    agent: Agent[str] = Agent(model, [weather], "You report the weather.", **options)

    @app.workflow
    async def forecast(ctx: Context, question: str) -> dict[str, Any]:
        result = await agent.run(ctx, question)
        await ctx.sleep(0.1)  # parks the run: what follows is a replay of the agent
        return {"output": result.output, "turns": result.turns, "cost": result.cost_usd}

    return app, asked


def provider_model(fake: FakeOpenAI | FakeAnthropic) -> OpenAIModel | AnthropicModel:
    price = Price(1.0, 2.0)
    if isinstance(fake, FakeOpenAI):
        return OpenAIModel("gpt-test", api_key=KEY, base_url=fake.base_url, price=price)
    return AnthropicModel("claude-test-1", api_key=KEY, base_url=fake.base_url, price=price)


def tool_turn(fake: FakeOpenAI | FakeAnthropic) -> Reply:
    if isinstance(fake, FakeOpenAI):
        return fake.completion(None, ("call_1", "weather", {"city": "Paris"}), usage=(100, 20))
    return fake.message(None, ("toolu_1", "weather", {"city": "Paris"}), usage=(100, 20))


def final_turn(fake: FakeOpenAI | FakeAnthropic) -> Reply:
    if isinstance(fake, FakeOpenAI):
        return fake.completion("Sunny, 21 C.", usage=(200, 10))
    return fake.message("Sunny, 21 C.", usage=(200, 10))


@pytest.fixture(params=["openai", "anthropic"])
def fake(request: pytest.FixtureRequest) -> Iterator[FakeOpenAI | FakeAnthropic]:
    with FakeOpenAI() if request.param == "openai" else FakeAnthropic() as server:
        yield server


async def test_an_agent_calls_a_tool_then_answers_and_the_journal_has_it(
    db_url: str, fake: FakeOpenAI | FakeAnthropic
) -> None:
    model = provider_model(fake)
    fake.queue(tool_turn(fake), final_turn(fake))
    app, asked = build(db_url, model, model_retries=0)
    async with model, app:
        handle = await app.start("forecast", "Weather in Paris?", run_id="w1")
        result = await handle.result(timeout=30)
        journal = await app.get_journal("w1")
    assert result["output"] == "Sunny, 21 C." and result["turns"] == 2
    assert result["cost"] == pytest.approx((300 * 1.0 + 30 * 2.0) / 1e6)
    assert asked == ["Paris"]
    assert len(fake.requests) == 2  # the replay after the sleep asked nothing
    assert [(e.kind, e.name) for e in journal] == [
        ("model", model.name),
        ("tool", "weather"),
        ("model", model.name),
        ("sleep", "sleep"),
    ]
    # The tool's result went back to the provider in its own format.
    second = fake.bodies[1]
    if isinstance(fake, FakeOpenAI):
        result_message = second["messages"][-1]
        assert result_message["role"] == "tool" and result_message["tool_call_id"] == "call_1"
        assert json.loads(result_message["content"])["sky"] == "sunny"
    else:
        [block] = second["messages"][-1]["content"]
        assert block["type"] == "tool_result" and block["tool_use_id"] == "toolu_1"
        assert json.loads(block["content"])["sky"] == "sunny"


async def test_a_rate_limited_call_is_asked_again_by_the_runtime(
    db_url: str, fake: FakeOpenAI | FakeAnthropic
) -> None:
    model = provider_model(fake)
    fake.queue(fake.error(429, "Rate limit reached", {"retry-after": "0"}), final_turn(fake))
    app, _ = build(db_url, model, model_retries=2, model_backoff=0.01)
    async with model, app:
        handle = await app.start("forecast", "Weather?", run_id="w2")
        result = await handle.result(timeout=30)
        journal = await app.get_journal("w2")
    assert result["output"] == "Sunny, 21 C."
    assert len(fake.requests) == 2
    assert [e.kind for e in journal].count("model") == 1  # one entry, two tries


async def test_a_rejected_key_fails_the_run_without_asking_again(
    db_url: str, fake: FakeOpenAI | FakeAnthropic
) -> None:
    model = provider_model(fake)
    fake.queue(fake.error(401, "invalid x-api-key"))
    app, _ = build(db_url, model, model_retries=3, model_backoff=0.01)
    async with model, app:
        handle = await app.start("forecast", "Weather?", run_id="w3")
        with pytest.raises(RunFailedError) as failed:
            await handle.result(timeout=30)
    assert failed.value.error is not None
    message = failed.value.error["message"]
    assert "authentication failed" in message and "API key" in message
    assert KEY not in message
    assert len(fake.requests) == 1
