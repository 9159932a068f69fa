"""Studies, the sites that take part in them, and the enrolment of a site."""

from __future__ import annotations

import hmac
import secrets
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from jipkit.coordinator import audit
from jipkit.coordinator.access import (
    ROLES,
    Principal,
    User,
    refused,
    require,
    require_admin,
    roles_of,
    study_row,
)
from jipkit.coordinator.accounts import SITE_TOKEN_PREFIX
from jipkit.coordinator.base import ServiceBase, check_name, iso, sha256_text
from jipkit.errors import SignatureError
from jipkit.protocol.signing import fingerprint

__all__ = ["EnrolTicket", "StudiesMixin"]

_ENROL_TOKEN_PREFIX = "jipe_"


@dataclass(frozen=True)
class EnrolTicket:
    """What ``add-site`` hands to a site's operator (out of band).

    Attributes
    ----------
    site : str
    enrol_token : str or None
        The one-time enrol token, shown once; None when the site existed and no new
        token was asked for.
    expires_at : str or None
    coordinator_key_id, coordinator_fingerprint : str
        What the site pins and compares.
    """

    site: str
    enrol_token: str | None
    expires_at: str | None
    coordinator_key_id: str
    coordinator_fingerprint: str


class StudiesMixin(ServiceBase):
    """Create studies, register sites (with one-time enrol tokens), enrol them."""

    def create_study(
        self,
        name: str,
        *,
        review_quorum: int | None = None,
        sites: Iterable[str] = (),
        caller: Principal | None = None,
    ) -> dict[str, Any]:
        """Create a study (admins only; ``caller=None`` is the local admin CLI).

        Parameters
        ----------
        name : str
        review_quorum : int, optional
            Approvals a version needs; default the configuration's ``review_quorum``.
        sites : iterable of str
            Existing sites that take part.

        Raises
        ------
        CoordinatorError
            ``forbidden``, ``name_invalid``, ``exists``, ``not_found`` (a site).
        """
        actor = require_admin(caller)
        check_name("study", name)
        quorum = self.config.review_quorum if review_quorum is None else int(review_quorum)
        if quorum < 1:
            raise refused(400, "request_invalid", f"Expected a review quorum of at least 1, found {quorum}.")
        site_list = sorted(set(sites))
        with self.db.write() as c:
            if c.execute("SELECT 1 FROM studies WHERE name = ?", (name,)).fetchone():
                raise refused(409, "exists", f"A study named {name!r} exists already.")
            c.execute("INSERT INTO studies VALUES (?, ?, ?)", (name, quorum, iso(self._clock())))
            for site in site_list:
                if not c.execute("SELECT 1 FROM sites WHERE name = ?", (site,)).fetchone():
                    raise refused(
                        404, "not_found", f"No site named {site!r}. Add it: jip coordinator add-site"
                    )
                c.execute("INSERT INTO study_sites VALUES (?, ?)", (name, site))
            audit.append(c, actor, "study", name, {"review_quorum": quorum, "sites": site_list})
        return {"name": name, "review_quorum": quorum, "sites": site_list}

    def add_site(
        self, name: str, *, study: str | None = None, reissue: bool = False, actor: str = "admin-cli"
    ) -> EnrolTicket:
        """Register a site (or add it to a study) and make a one-time enrol token.

        Parameters
        ----------
        name : str
        study : str, optional
            A study the site takes part in.
        reissue : bool
            Make a new enrol token for a site that exists (re-enrolment replaces its
            token and pinned key).

        Returns
        -------
        EnrolTicket
            Its ``enrol_token`` is shown once; the database keeps its SHA-256.
        """
        check_name("site", name)
        now = self._clock()
        token: str | None = None
        expires: float | None = None
        with self.db.write() as c:
            if study is not None:
                study_row(c, study)
            exists = c.execute("SELECT 1 FROM sites WHERE name = ?", (name,)).fetchone() is not None
            if not exists or reissue:
                token = _ENROL_TOKEN_PREFIX + secrets.token_urlsafe(32)
                expires = now + self.config.enrol_ttl_s
            if not exists:
                c.execute(
                    "INSERT INTO sites (name, enrol_token_hash, enrol_expires_at, created_at) VALUES (?, ?, ?, ?)",
                    (name, sha256_text(token or ""), expires, iso(now)),
                )
            elif reissue:
                c.execute(
                    "UPDATE sites SET enrol_token_hash = ?, enrol_expires_at = ? WHERE name = ?",
                    (sha256_text(token or ""), expires, name),
                )
            if study is not None:
                c.execute("INSERT OR IGNORE INTO study_sites VALUES (?, ?)", (study, name))
            audit.append(c, actor, "site", name, {"study": study, "enrol_token_issued": token is not None})
        return EnrolTicket(
            name,
            token,
            iso(expires) if expires is not None else None,
            self.key.key_id,
            fingerprint(self.key.public_b64),
        )

    def enrol(self, site: str, enrol_token: str, public_key: str) -> dict[str, Any]:
        """Enrol a site: check its one-time token, pin its public key, issue its site token.

        Returns
        -------
        dict
            ``{site_token, coordinator_keys}``; the site token is shown once.

        Raises
        ------
        CoordinatorError
            ``enrol_token_invalid`` (401) or ``public_key_invalid`` (400).
        """
        try:
            fp = fingerprint(public_key)
        except SignatureError as err:
            raise refused(400, "public_key_invalid", str(err)) from err
        bad = refused(
            401,
            "enrol_token_invalid",
            "Unknown site, or a wrong, used or expired enrol token. Ask the coordinator's admin for a new one "
            "(jip coordinator add-site SITE --reissue).",
        )
        site_token = SITE_TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = self._clock()
        with self.db.write() as c:
            row = c.execute(
                "SELECT enrol_token_hash, enrol_expires_at FROM sites WHERE name = ?", (site,)
            ).fetchone()
            if row is None or row["enrol_token_hash"] is None or (row["enrol_expires_at"] or 0) < now:
                raise bad
            if not hmac.compare_digest(row["enrol_token_hash"], sha256_text(enrol_token)):
                raise bad
            c.execute(
                "UPDATE sites SET token_hash = ?, enrol_token_hash = NULL, enrol_expires_at = NULL, "
                "public_key = ?, key_fingerprint = ?, enrolled_at = ? WHERE name = ?",
                (sha256_text(site_token), public_key, fp, iso(now), site),
            )
            audit.append(c, f"site:{site}", "enrol", site, {"key_fingerprint": fp})
        return {"site_token": site_token, "coordinator_keys": self.public_keys()}

    def list_studies(self, caller: Principal) -> list[dict[str, Any]]:
        """The studies ``caller`` may see: where they hold a role, or every study for an admin.

        Returns
        -------
        list of dict
            ``{name, review_quorum, sites, roles}`` by name; ``roles`` are the caller's.
        """
        if not isinstance(caller, User):
            raise refused(403, "forbidden", "A site token cannot call this endpoint: use a user's token.")
        with self.db.read() as c:
            if caller.is_admin:
                names = [r[0] for r in c.execute("SELECT name FROM studies ORDER BY name")]
            else:
                names = [
                    r[0]
                    for r in c.execute(
                        "SELECT DISTINCT study FROM study_roles WHERE user_id = ? ORDER BY study",
                        (caller.id,),
                    )
                ]
            return [self._study_entry(c, caller, name) for name in names]

    def get_study(self, caller: Principal, study: str) -> dict[str, Any]:
        """A study's settings, its sites and the caller's roles in it (members, admins).

        Returns
        -------
        dict
            ``{name, review_quorum, sites, roles}``.

        Raises
        ------
        CoordinatorError
            ``forbidden``, ``not_found``.
        """
        with self.db.read() as c:
            study_row(c, study)
            require(c, caller, study, ROLES, admin_ok=True)
            assert isinstance(caller, User)
            return self._study_entry(c, caller, study)

    @staticmethod
    def _study_entry(c: sqlite3.Connection, caller: User, study: str) -> dict[str, Any]:
        row = study_row(c, study)
        sites = [
            r[0] for r in c.execute("SELECT site FROM study_sites WHERE study = ? ORDER BY site", (study,))
        ]
        return {
            "name": study,
            "review_quorum": row["review_quorum"],
            "sites": sites,
            "roles": sorted(roles_of(c, caller, study), key=ROLES.index),
        }
