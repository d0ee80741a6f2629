"""What the SDK adapters share: turning a provider's HTTP failure into a ``_model`` error.

Both adapters create their SDK client with ``max_retries=0`` (the runtime retries, not the
SDK) and map what went wrong the same way::

    408, 409, 429, 5xx (529: overloaded)  ModelUnavailableError  retried by the runtime,
    connection refused or reset, timeout                         never sooner than
                                                                 Retry-After
    401, 403                              ModelAuthError         never retried
    any other 4xx (400, 404, 422, ...)    ModelRequestError      never retried

``SDKModel`` holds what both adapters do alike (their settings, price, API key, client
life cycle); this module imports no SDK: the adapters hand it a status, headers and a body.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar

from .._errors import ConfigurationError
from ._messages import ModelRequest, Usage
from ._model import ModelAuthError, ModelError, ModelRequestError, ModelUnavailableError
from ._pricing import Price

__all__ = [
    "SDKModel",
    "connection_error",
    "missing_key_error",
    "provider_message",
    "retry_after",
    "settings_clash",
    "status_error",
]

# Statuses worth asking again, as the providers' own SDKs judge them.
_TRANSIENT = frozenset({408, 409, 429})
_MAX_MESSAGE = 1000  # characters of a provider's error body kept in an error message


def retry_after(headers: Mapping[str, str], *, now: datetime | None = None) -> float | None:
    """Seconds the provider asked to wait: ``retry-after-ms`` (milliseconds, sent by
    OpenAI) first, then ``Retry-After`` as seconds or as an HTTP date; None without one."""
    for name, unit in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value.strip()) / unit
        except ValueError:
            continue
        if math.isfinite(seconds):
            return max(0.0, seconds)
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def provider_message(body: object, fallback: str) -> str:
    """The provider's own words: ``error.message`` of a JSON error body (OpenAI and
    Anthropic both nest it so), else the body's text, else ``fallback``."""
    if isinstance(body, Mapping):
        error: Any = body.get("error", body)
        if isinstance(error, Mapping) and isinstance(error.get("message"), str):
            text = str(error["message"])
        elif isinstance(error, str):
            text = error
        else:
            text = fallback
    elif isinstance(body, str) and body.strip():
        text = body.strip()
    else:
        text = fallback
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + "..."


def status_error(
    status: int,
    message: str,
    headers: Mapping[str, str],
    *,
    provider: str,
    base_url: str,
    key_env: str,
    secrets: tuple[str, ...] = (),
) -> ModelError:
    """The error for an HTTP error status. ``secrets`` (the API key) are scrubbed from the
    provider's message: some providers quote the key they refused, and error messages
    end up in the journal and in logs."""
    for secret in secrets:
        message = message.replace(secret, "***")
    where = f"{provider} at {base_url}"
    if status in _TRANSIENT or status >= 500:
        wait = retry_after(headers)
        hint = f" (retry after {wait:g} s)" if wait is not None else ""
        return ModelUnavailableError(
            f"{where} is unavailable (HTTP {status}){hint}: {message}",
            retry_after=wait,
            status=status,
        )
    if status in (401, 403):
        what = "rejected the API key" if status == 401 else "refused permission"
        return ModelAuthError(
            f"authentication failed: {where} {what} (HTTP {status}): {message}. Check the "
            f"API key (the api_key argument, or the {key_env} environment variable)"
            + (" and what it may use" if status == 403 else ""),
            status=status,
        )
    return ModelRequestError(
        f"{where} refused the request (HTTP {status}): {message}", status=status
    )


def connection_error(
    *, provider: str, base_url: str, timed_out: bool, timeout: float, detail: str
) -> ModelUnavailableError:
    if timed_out:
        text = f"{provider} at {base_url} did not answer within {timeout:g} s"
    else:
        text = f"cannot reach {provider} at {base_url}: {detail}"
    return ModelUnavailableError(text)


def missing_key_error(
    *, provider: str, base_url: str, adapter: str, key_env: str
) -> ModelAuthError:
    return ModelAuthError(
        f"no API key for {provider} at {base_url}: pass {adapter}(..., api_key=...) or set "
        f"the {key_env} environment variable"
    )


def settings_clash(settings: Mapping[str, Any], reserved: frozenset[str], adapter: str) -> str:
    """Why these settings cannot be sent ("" if they can). Settings go into the request
    body as they are, except those the adapter writes itself (the conversation, the
    tools, streaming)."""
    clash = sorted(reserved.intersection(settings))
    if not clash:
        return ""
    them = "it" if len(clash) == 1 else "them"
    return f"{adapter} sets {', '.join(clash)} itself; remove {them} from the settings"


class _Client(Protocol):
    async def close(self) -> None: ...


C = TypeVar("C", bound=_Client)


class SDKModel(Generic[C]):
    """The part of an SDK adapter that does not depend on the SDK.

    The client is created on the first request, not before: a process that only replays
    recorded runs needs no key, and a key set after the model is built is still found.
    A client handed in is used as it is, except that its retries are turned off."""

    provider: ClassVar[str]  # as named in error messages
    key_env: ClassVar[str]  # the environment variable of the API key
    base_url_env: ClassVar[str]  # the SDK's own environment variable for the base URL
    default_base_url: ClassVar[str]
    reserved: ClassVar[frozenset[str]]  # request fields the adapter writes itself

    def __init__(
        self,
        model: str,
        *,
        name: str,
        api_key: str | None,
        base_url: str | None,
        price: Price | None,
        timeout: float,
        settings: Mapping[str, Any] | None,
        client: C | None,
    ) -> None:
        adapter = type(self).__name__
        if not timeout > 0:
            raise ConfigurationError(f"{adapter}: timeout must be > 0 seconds, got {timeout}")
        clash = settings_clash(settings or {}, self.reserved, adapter)
        if clash:
            raise ConfigurationError(clash)
        self.model = model
        self.name = name
        self.price = price
        self.timeout = timeout
        self.settings = dict(settings or {})
        self._api_key = api_key
        self._base_url = base_url
        self._owns_client = client is None
        self._client = None if client is None else self._without_retries(client)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.model!r} at {self.base_url}>"

    @property
    def base_url(self) -> str:
        if self._client is not None:
            return str(getattr(self._client, "base_url", self._base_url)).rstrip("/")
        return self._base_url or os.environ.get(self.base_url_env) or self.default_base_url

    def cost_usd(self, usage: Usage) -> float:
        """What a call's usage cost at ``price``; 0.0 without one."""
        return self.price.cost_usd(usage) if self.price is not None else 0.0

    async def aclose(self) -> None:
        """Close the client this model created; a later request creates another. A client
        handed in is its owner's to close, and stays in use."""
        if self._client is not None and self._owns_client:
            client, self._client = self._client, None
            await client.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _connect(self) -> C:
        if self._client is None:
            key = self._api_key or os.environ.get(self.key_env)
            if not key:
                raise missing_key_error(
                    provider=self.provider,
                    base_url=self.base_url,
                    adapter=type(self).__name__,
                    key_env=self.key_env,
                )
            self._client = self._new_client(key)
            self._owns_client = True
        return self._client

    def _settings(self, request: ModelRequest) -> dict[str, Any]:
        """The model's settings overridden by the request's."""
        settings = {**self.settings, **request.settings}
        clash = settings_clash(settings, self.reserved, type(self).__name__)
        if clash:
            raise ModelRequestError(clash)
        return settings

    def _status_error(self, status: int, body: object, fallback: str, headers: Any) -> ModelError:
        secrets = (
            self._api_key,
            getattr(self._client, "api_key", None),
            getattr(self._client, "auth_token", None),
        )
        return status_error(
            status,
            provider_message(body, fallback),
            headers,
            provider=self.provider,
            base_url=self.base_url,
            key_env=self.key_env,
            secrets=tuple(s for s in secrets if isinstance(s, str) and s),
        )

    def _connection_error(self, exc: BaseException, *, timed_out: bool) -> ModelUnavailableError:
        # The SDK's own message ("Connection error.") says less than the error under it.
        cause = exc.__cause__ or exc.__context__ or exc
        detail = str(cause) or type(cause).__name__
        return connection_error(
            provider=self.provider,
            base_url=self.base_url,
            timed_out=timed_out,
            timeout=self.timeout,
            detail=detail,
        )

    def _new_client(self, api_key: str) -> C:
        raise NotImplementedError

    def _without_retries(self, client: C) -> C:
        raise NotImplementedError
