"""Wiring for the msec dialog policy ([dialog] in stird.toml; RFC 8862 §4.3–4.4).

``policy = "off"`` (the default) tracks nothing. Otherwise the daemon runs one
:class:`DialogPolicy` whose timer task checks the windows, and ends dialogs through the
PBX links that exist: Kamailio's jsonrpcs when ``[kamailio]`` names one, the Asterisk
manager when ``[asterisk] ami_enabled``. Outcomes are counted in
``stird_msec_dialogs_total{outcome,policy}``. With several workers the dialogs live in
a SQLite file they share (stird.adapters.dialogs_sqlite), so a dialog signed through one
worker is confirmed, answered or ended through any, and one worker's timer ends it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from stird.adapters.ami import AmiClient
from stird.adapters.dialog_api import DialogApi
from stird.adapters.dialog_enders import AsteriskEnder, DeferredEnder, KamailioEnder, RoutingEnder
from stird.adapters.dialogs_sqlite import SqliteDialogStore
from stird.adapters.kamailio_rpc import KamailioRpc
from stird.adapters.metrics import Metrics
from stird.adapters.supervisor import Supervisor
from stird.services.dialogs import DialogPolicy, MsecPolicy, Outcome
from stird.wiring.config import DialogConfig

log = logging.getLogger("stird")

#: How long after the decision the PBX is told to end the dialog: the answer that
#: caused it (438 to the backwards UPDATE) leaves first.
END_DELAY = 0.2
TASK = "dialogs"  # the timer task's name under the supervisor


@dataclass
class DialogParts:
    api: DialogApi
    ender: RoutingEnder = field(default_factory=RoutingEnder)
    deferred: DeferredEnder | None = None
    supervisor: Supervisor | None = None
    store: SqliteDialogStore | None = None

    def start(
        self, kamailio: KamailioRpc | None, ami: AmiClient | None, supervisor: Supervisor
    ) -> None:
        """Attach the PBX links and start the timer task (policy on only), restarted by
        ``supervisor`` when it fails."""
        self.ender.kamailio = KamailioEnder(kamailio) if kamailio is not None else None
        self.ender.asterisk = AsteriskEnder(ami) if ami is not None else None
        policy = self.api.policy
        if policy is None:
            return
        if kamailio is None and ami is None and policy.policy is MsecPolicy.MANDATORY:
            log.warning(
                "[dialog] policy = mandatory, but no PBX link can end a dialog: configure "
                "[kamailio] rpc_url/rpc_socket or [asterisk] ami_enabled"
            )
        self.supervisor = supervisor
        supervisor.supervise(TASK, policy.run)
        log.info("msec dialog policy %s, window %.1f s", policy.policy.value, policy.window)

    def reconfigure(self, policy: str, window: float) -> None:
        """SIGHUP: a new policy or window applies to dialogs from now on; switching the
        policy on or off needs a restart."""
        current = self.api.policy
        if (current is None) != (policy == "off"):
            log.warning("[dialog] policy: switching it on or off needs a restart")
            return
        if current is not None:
            current.policy, current.window = MsecPolicy(policy), float(window)

    async def close(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.cancel(TASK)
            self.supervisor = None
        if self.deferred is not None:
            await self.deferred.close()
        if self.store is not None:
            self.store.close()
            self.store = None


def build_dialogs(
    dialog: DialogConfig, metrics: Metrics, shared: Path | None = None
) -> DialogParts:
    """The policy of ``[dialog]``; ``shared``: the workers' dialog file (else in memory)."""
    if dialog.policy == "off":
        return DialogParts(DialogApi(None))
    routing = RoutingEnder()
    deferred = DeferredEnder(routing, delay=END_DELAY)

    def count(call_id: str, outcome: Outcome, policy: MsecPolicy) -> None:
        metrics.dialogs.labels(outcome.value, policy.value).inc()

    store = SqliteDialogStore(shared) if shared is not None else None
    policy = DialogPolicy(
        deferred,
        policy=MsecPolicy(dialog.policy),
        window=float(dialog.window),
        clock=time.monotonic,  # windows are durations: immune to wall-clock steps
        on_outcome=count,
        store=store,
    )
    return DialogParts(DialogApi(policy), routing, deferred, store=store)


__all__ = ["DialogParts", "build_dialogs"]
