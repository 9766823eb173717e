"""The application: typed state and owned lifetimes (STYLE practice 1).

The shape is aiohttp's ``Application`` (``AppKey`` state, ``cleanup_ctx`` async generators,
``on_cleanup``), without aiohttp: since our own edge serves every request (connection.py),
aiohttp is only the JWKS endpoint's HTTP client, and a sidecar that decides Basic passwords,
or tokens against a key file, need not load it (it took ~130 ms and ~10 MB of every start).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar, cast

T = TypeVar("T")


class AppKey(Generic[T]):
    """A typed key of the application's state: ``app[KEY]`` is a ``T``."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"AppKey({self.name!r})"


Lifetime = Callable[["Application"], AsyncIterator[None]]


class Application:
    """State under :class:`AppKey`\\ s, and the lifetimes of the resources it holds.

    Each of ``cleanup_ctx`` is an async generator function: acquire, ``yield``, release.
    :meth:`startup` runs them to their ``yield`` in order; :meth:`cleanup` resumes them, last
    first, then calls ``on_cleanup``.
    """

    def __init__(self) -> None:
        self._state: dict[AppKey[Any], Any] = {}
        self.cleanup_ctx: list[Lifetime] = []
        self.on_cleanup: list[Callable[[Application], Awaitable[None]]] = []
        self._entered: list[AsyncIterator[None]] = []

    def __getitem__(self, key: AppKey[T]) -> T:
        return cast(T, self._state[key])

    def __setitem__(self, key: AppKey[T], value: T) -> None:
        self._state[key] = value

    def __contains__(self, key: AppKey[Any]) -> bool:
        return key in self._state

    def get(self, key: AppKey[T]) -> T | None:
        return cast("T | None", self._state.get(key))

    async def startup(self) -> None:
        """Enter every lifetime, in order. If one fails, those entered are left again (as by
        :meth:`cleanup`) and its error raised."""
        for lifetime in self.cleanup_ctx:
            generator = lifetime(self)
            try:
                await anext(generator)
            except BaseException:
                await self.cleanup()
                raise
            self._entered.append(generator)

    async def cleanup(self) -> None:
        """Leave the lifetimes entered, last first, then run ``on_cleanup``. Every one runs
        even if another fails; the first error is raised at the end."""
        errors: list[Exception] = []
        while self._entered:
            generator = self._entered.pop()
            try:
                await anext(generator)
            except StopAsyncIteration:
                continue
            except Exception as exc:
                errors.append(exc)
                continue
            errors.append(RuntimeError(f"a lifetime yielded twice: {generator!r}"))
        for callback in self.on_cleanup:
            try:
                await callback(self)
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
