"""Credential providers that need no network: fixed maps (CLI ``--cert``, stird's own
certificates) in front of, or instead of, the fetching cache."""

from __future__ import annotations

from collections.abc import Mapping

from stird.core.errors import Check, SipStatus, StirError
from stird.core.verdict import Credential
from stird.services.ports import CredentialProvider


class StaticCredentials:
    """A fixed ``info`` URL → credential map; anything else goes to ``fallback`` or is 436."""

    def __init__(
        self,
        known: Mapping[str, Credential | StirError],
        fallback: CredentialProvider | None = None,
    ) -> None:
        self._known = dict(known)
        self._fallback = fallback

    async def credential(self, url: str) -> Credential:
        found = self._known.get(url)
        if isinstance(found, Credential):
            return found
        if isinstance(found, StirError):
            raise found
        if self._fallback is not None:
            return await self._fallback.credential(url)
        raise StirError(
            SipStatus.BAD_IDENTITY_INFO, f"no credential known for {url}", check=Check.CREDENTIAL
        )
