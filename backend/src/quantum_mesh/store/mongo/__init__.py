"""MongoDB projections of the Postgres event tables, and the embedded document server.

Postgres (or the embedded SQLite) is the source of truth; everything here can be dropped and
rebuilt from it (see ``docs/data-plane.md``).
"""
