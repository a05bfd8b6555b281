"""Who may act: the operator check every change goes through (refusals are audited)."""

from __future__ import annotations

from crisiscomms.domain.config import Catalog
from crisiscomms.domain.errors import RefusedError
from crisiscomms.domain.models import NewAuditEvent
from crisiscomms.ports import Clock, Store


def check_operator(store: Store, catalog: Catalog, clock: Clock, operator: str,
                   action: str, subject: str) -> None:
    """Refuse (and audit the refusal) if policy.yaml lists operators and this is not one."""
    allowed = catalog.policy.operators
    if allowed and operator not in allowed:
        audit_refusal(store, clock, operator, f"{action}.refused", subject,
                      f"operator {operator!r} is not listed in policy.yaml operators")
        raise RefusedError(f"operator {operator!r} may not {action.split('.')[-1]}: not listed "
                           f"in {catalog.files.get('policy')} operators")


def audit_refusal(store: Store, clock: Clock, operator: str, action: str, subject: str,
                  reason: str) -> None:
    """Record a refused action on the audit trail (its own unit of work)."""
    with store.unit_of_work() as uow:
        uow.audit.append(NewAuditEvent(operator, action, subject, reason, clock.now()))
        uow.commit()
