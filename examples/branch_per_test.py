"""A branch per test: every test gets its own copy of a seeded database, made
without copying a page, and throws it away. Run with the server from the Quick
Start (Debian's /usr/bin/python3, which can load extensions):

    /usr/bin/python3 examples/branch_per_test.py

With pytest, the same `branch` function makes a fixture.
"""
import os
import sqlite3
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
LIB = os.environ.get(
    "PAGEWIRE_VFS_LIB", os.path.join(HERE, "..", "target", "release", "libpagewire_vfs")
)

loader = sqlite3.connect(":memory:")
loader.enable_load_extension(True)
loader.load_extension(LIB)  # pagewire is now the default VFS

SEED = "demo/seed.db"


def seed():
    db = sqlite3.connect(SEED, isolation_level=None)
    db.execute("drop table if exists users")
    db.execute("create table users(id integer primary key, name text unique)")
    db.executemany("insert into users(name) values (?)", [("ada",), ("grace",)])
    return db


def branch(seed_db, test_name):
    """A writable branch of the seed at its newest version, for one test."""
    name = f"demo/test-{test_name}-{uuid.uuid4().hex[:8]}"
    (answer,) = seed_db.execute(f"pragma pagewire_fork='{name}'").fetchone()
    assert answer.startswith(f"name={name} "), answer
    return sqlite3.connect(name, isolation_level=None)


def test_delete_a_user(db):
    db.execute("delete from users where name = 'ada'")
    assert db.execute("select count(*) from users").fetchone() == (1,)


def test_add_a_user(db):
    db.execute("insert into users(name) values ('linus')")
    assert db.execute("select count(*) from users").fetchone() == (3,)


if __name__ == "__main__":
    seed_db = seed()
    for test in (test_delete_a_user, test_add_a_user):
        test(branch(seed_db, test.__name__))
        print("ok", test.__name__)
    # Neither test touched the seed.
    assert seed_db.execute("select count(*) from users").fetchone() == (2,)
    print("seed untouched:", seed_db.execute("select name from users order by id").fetchall())
