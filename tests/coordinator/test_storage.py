"""What the database holds: hashed secrets, and an audit chain that detects tampering."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path

import pytest

from jipkit.coordinator import audit
from jipkit.coordinator.config import CoordinatorConfig
from jipkit.coordinator.db import Database
from jipkit.coordinator.service import Service
from jipkit.protocol.signing import SigningKey
from tests.coordinator._helpers import World, count


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _raw_bytes(db_path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db_path.parent.glob(db_path.name + "*"))


def test_passwords_argon2id_and_tokens_sha256_only(world: World) -> None:
    site = world.new_sites(1)[0]
    db = sqlite3.connect(f"file:{world.coord.db_path}?mode=ro", uri=True)
    try:
        hashes = dict(db.execute("SELECT username, password_hash FROM users").fetchall())
        token_hashes = {r[0] for r in db.execute("SELECT token_hash FROM user_tokens")}
        site_row = db.execute(
            "SELECT token_hash, enrol_token_hash, public_key, key_fingerprint FROM sites WHERE name = ?",
            (site.name,),
        ).fetchone()
    finally:
        db.close()
    assert all(h.startswith("$argon2id$") for h in hashes.values())
    assert {_sha256(t) for t in world.tokens.values()} <= token_hashes
    assert site_row[0] == _sha256(site.token) and site_row[1] is None  # the enrol token is spent
    assert site_row[2] == site.key.public_b64 and site_row[3].startswith("SHA256:")
    raw = _raw_bytes(world.coord.db_path)
    for secret in [*world.tokens.values(), site.token, "a long test password"]:
        assert secret.encode() not in raw


def test_audit_records_every_kind_of_change(world: World) -> None:
    site = world.new_sites(1)[0]
    world.start_run([site])
    env = site.claim()
    site.post(env["job_id"], site.result(env, records=[count("ct_series", 3)]))
    check = world.svc.verify_audit()
    assert check.ok and check.entries > 10
    with world.svc.db.read() as c:
        actions = {e["action"] for e in audit.entries(c, limit=100_000)}
        claim = next(e for e in audit.entries(c, subject=env["job_id"]) if e["action"] == "signature")
    assert {"user", "role", "study", "site", "enrol", "submission", "review", "approval"} <= actions
    assert {"run", "signature", "claim", "result", "run_done"} <= actions
    assert claim["data"]["key_id"] == env["signature"]["key_id"]


@pytest.fixture
def small_service(tmp_path: Path) -> Service:
    cfg = CoordinatorConfig(
        data_dir=tmp_path, argon2_time_cost=1, argon2_memory_kib=8192, argon2_parallelism=1
    )
    key = SigningKey.generate()
    key.save(cfg.key_file)
    return Service(Database(cfg.database_file), key, cfg)


def test_audit_chain_detects_a_changed_row(small_service: Service, tmp_path: Path) -> None:
    svc = small_service
    svc.create_user("root", "long enough pw", admin=True)
    svc.create_study("s1")
    svc.add_site("site-a", study="s1")
    assert svc.verify_audit().ok
    with pytest.raises(sqlite3.IntegrityError, match="append-only"), svc.db.write() as c:
        c.execute("UPDATE audit SET data = '{}' WHERE id = 2")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"), svc.db.write() as c:
        c.execute("DELETE FROM audit WHERE id = 2")
    svc.close()

    # Someone with write access to the file drops the triggers and edits history.
    for what, sql, problem in [
        ("changed", 'UPDATE audit SET data = \'{"review_quorum":1,"sites":[]}\' WHERE id = 2', "changed"),
        ("deleted", "DELETE FROM audit WHERE id = 2", "missing"),
        ("relinked", "UPDATE audit SET prev_hash = hash WHERE id = 3", "prev_hash"),
    ]:
        copy = tmp_path / f"{what}.sqlite"
        shutil.copy(tmp_path / "coordinator.sqlite", copy)
        db = sqlite3.connect(copy)
        db.executescript("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;")
        db.execute(sql)
        db.commit()
        check = audit.verify_chain(db)
        db.close()
        assert not check.ok, what
        assert problem in (check.problem or ""), (what, check)
        assert check.bad_id in (2, 3)


def test_audit_head_changes_with_each_entry(small_service: Service) -> None:
    svc = small_service
    with svc.db.read() as c:
        assert audit.head(c) == audit.GENESIS
    svc.create_study("s2")
    with svc.db.read() as c:
        h1 = audit.head(c)
    svc.create_study("s3")
    with svc.db.read() as c:
        assert audit.head(c) != h1 and audit.verify_chain(c).head == audit.head(c)
    svc.close()
