"""NVFlare's four admin roles, as the table in hpcflare.federation.roles says."""

from __future__ import annotations

import pytest

from hpcflare.errors import PermissionDeniedError
from hpcflare.federation.roles import Action, Admin

LEAD = Admin("alice", "lead", "hosp-a")
OTHER_LEAD = Admin("dave", "lead", "hosp-b")
ORG_ADMIN = Admin("olga", "org_admin", "hosp-a")
MEMBER = Admin("bob", "member", "hosp-a")
ROOT = Admin("root", "project_admin", "board")


@pytest.mark.parametrize(
    "admin, action, owner, org, allowed",
    [
        (ROOT, Action.SUBMIT, "", "", True),
        (LEAD, Action.SUBMIT, "", "", True),
        (ORG_ADMIN, Action.SUBMIT, "", "", False),
        (MEMBER, Action.SUBMIT, "", "", False),
        (ROOT, Action.ABORT, "dave", "hosp-b", True),
        (LEAD, Action.ABORT, "alice", "hosp-a", True),
        (LEAD, Action.ABORT, "dave", "hosp-b", False),
        (ORG_ADMIN, Action.ABORT, "alice", "hosp-a", True),
        (ORG_ADMIN, Action.ABORT, "dave", "hosp-b", False),
        (MEMBER, Action.ABORT, "bob", "hosp-a", False),
        (OTHER_LEAD, Action.DOWNLOAD, "alice", "hosp-a", False),
        (ORG_ADMIN, Action.DOWNLOAD, "alice", "hosp-a", True),
        (MEMBER, Action.VIEW, "", "", True),
    ],
)
def test_the_role_table(admin, action, owner, org, allowed):
    assert admin.may(action, owner, org) is allowed
    if allowed:
        admin.check(action, owner, org)
    else:
        with pytest.raises(PermissionDeniedError, match=f"role {admin.role}"):
            admin.check(action, owner, org)


def test_site_logs_follow_the_org():
    assert ORG_ADMIN.may_see_site_logs("hosp-a") and not ORG_ADMIN.may_see_site_logs("hosp-b")
    assert ROOT.may_see_site_logs("anything") and not MEMBER.may_see_site_logs("hosp-a")
