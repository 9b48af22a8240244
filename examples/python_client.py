#!/usr/bin/env python3
"""pagewire from Python's standard sqlite3 module.

Run with a Python whose sqlite3 module can load extensions (Debian's
/usr/bin/python3 can; some pyenv builds cannot), with a server running:

    PAGEWIRE_URL=http://127.0.0.1:7878 /usr/bin/python3 examples/python_client.py [path/to/libpagewire_vfs]
"""
import os
import sqlite3
import sys

lib = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(__file__), "..", "target", "release", "libpagewire_vfs")

# Loading the extension into any connection registers the `pagewire` VFS for the
# whole process and makes it the default.
loader = sqlite3.connect(":memory:")
loader.enable_load_extension(True)
loader.load_extension(lib)
loader.close()

db = sqlite3.connect("python/notes.db")
db.execute("create table if not exists notes(id integer primary key, body text)")
with db:  # one transaction: committed atomically on the server
    db.execute("insert into notes(body) values (?)", ("written from Python",))
    db.execute("insert into notes(body) values (?)", ("same transaction",))
count = db.execute("select count(*) from notes").fetchone()[0]
version = db.execute("pragma pagewire_version").fetchone()[0]
db.close()

# A replica: read-only, each read transaction at one version.
replica = sqlite3.connect("file:python/notes.db?mode=ro", uri=True)
assert replica.execute("select count(*) from notes").fetchone()[0] == count
print(f"notes={count} version={version}")
