"""Who may do what on a standing server: NVFlare's four admin roles.

===============  ======  ====================  =====================  ==========================
role             submit  abort                 download               list, status, sites
===============  ======  ====================  =====================  ==========================
project_admin    yes     any job               any job, every site    yes
org_admin        no      jobs of its org       jobs of its org        yes
lead             yes     its own jobs          its own jobs           yes
member           no      no                    no                     yes
===============  ======  ====================  =====================  ==========================

A site's logs come with a download only when the site's own policy sends them (``send_logs`` in site.yaml);
an org_admin gets the logs of its own org's sites only.
"""

from __future__ import annotations

import dataclasses
import enum

from hpcflare.errors import PermissionDeniedError
from hpcflare.security.tls import StartupKit


class Action(enum.StrEnum):
    SUBMIT = "submit"
    ABORT = "abort"
    DOWNLOAD = "download"
    VIEW = "view"


SUBMITTERS = ("project_admin", "lead")


@dataclasses.dataclass(frozen=True)
class Admin:
    """A caller of the Admin service: its certificate name, role and org (from the server's kit)."""

    name: str
    role: str
    org: str

    @classmethod
    def of(cls, kit: StartupKit, identity: str | None) -> Admin:
        """The admin behind a verified certificate name; PermissionDeniedError for anyone else."""
        if identity is None or kit.participants.get(identity) != "admin" or identity not in kit.admin_roles:
            raise PermissionDeniedError(
                f"{identity!r} is not an admin of project {kit.project!r}: admin calls need a startup kit of a "
                "participant with role admin (hpcflare provision, admin_role: project_admin|org_admin|lead|member)"
            )
        return cls(identity, kit.admin_roles[identity], kit.orgs.get(identity, identity))

    def check(self, action: Action, owner: str = "", owner_org: str = "") -> None:
        """Raise PermissionDeniedError naming the role that ``action`` needs unless this admin may do it on a job
        submitted by ``owner`` (of ``owner_org``)."""
        if self.may(action, owner, owner_org):
            return
        needs = {
            Action.SUBMIT: "project_admin or lead",
            Action.ABORT: "project_admin, org_admin of the submitter's org, or the submitting lead",
            Action.DOWNLOAD: "project_admin, org_admin of the submitter's org, or the submitting lead",
            Action.VIEW: "any admin role",
        }[action]
        raise PermissionDeniedError(
            f"{self.name} (role {self.role}, org {self.org}) may not {action}"
            + (f" job of {owner} (org {owner_org})" if owner else "")
            + f": that needs role {needs}"
        )

    def may(self, action: Action, owner: str = "", owner_org: str = "") -> bool:
        if action == Action.VIEW or self.role == "project_admin":
            return True
        if action == Action.SUBMIT:
            return self.role in SUBMITTERS
        if self.role == "org_admin":
            return owner_org == self.org
        if self.role == "lead":
            return owner == self.name
        return False

    def may_see_site_logs(self, site_org: str) -> bool:
        return self.role in ("project_admin", "lead") or (self.role == "org_admin" and site_org == self.org)
