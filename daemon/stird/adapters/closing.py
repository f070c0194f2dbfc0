"""``async with`` for the adapters that hold connections (Redis pools, HTTP clients): one
mixin, so each only says how it closes."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class AsyncClosing:
    """``async with thing:`` closes ``thing`` on the way out (subclasses define close)."""

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
