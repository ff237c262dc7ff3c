"""Make a store look as an older schema version wrote it, to test reading and upgrading it."""
from __future__ import annotations


def make_version_7(con) -> None:
    """No heatmap_layers or demographic_sources (they came with version 8)."""
    con.execute("DROP TABLE heatmap_layers")
    con.execute("DROP TABLE demographic_sources")
    con.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")


def make_version_6(con) -> None:
    """No explorer tables (they came with version 7), nor version 8's tables."""
    make_version_7(con)
    con.execute("DROP TABLE explorer_rows")
    con.execute("DROP TABLE explorer_codes")
    con.execute("UPDATE meta SET value = '6' WHERE key = 'schema_version'")


def make_version_5(con) -> None:
    """No explorer tables, no image_keys table and no image_key columns (they came with version 6)."""
    from pipeline.store import db as store

    make_version_6(con)
    con.execute("DROP TABLE image_keys")
    for index in store.ADDED_INDEXES:  # DuckDB alters no table with an index
        con.execute(f'DROP INDEX "{index}"')
    for table in store.IMAGE_KEY_TABLES:
        con.execute(f'ALTER TABLE "{table}" DROP COLUMN image_key')
    for statement in store.INDEX_STATEMENTS:
        con.execute(statement)
    con.execute("UPDATE meta SET value = '5' WHERE key = 'schema_version'")
