from __future__ import annotations

from tether.storage._migrations import load_migrations, split_statements


def test_split_statements_drops_comments_and_empty_parts() -> None:
    sql = (
        "-- header comment; with a semicolon\n"
        "CREATE TABLE a (\n"
        "    x INTEGER  -- trailing comment kept inside the statement\n"
        ");\n"
        "\n"
        "   -- indented comment\n"
        "CREATE INDEX a_x ON a (x);\n"
        "CREATE TABLE b (y TEXT);\n"
    )
    statements = split_statements(sql)
    assert len(statements) == 3
    assert statements[0].startswith("CREATE TABLE a (")
    assert statements[1] == "CREATE INDEX a_x ON a (x)"
    assert statements[2] == "CREATE TABLE b (y TEXT)"
    assert not any(s.endswith(";") for s in statements)


def test_split_statements_without_final_newline() -> None:
    assert split_statements("SELECT 1;\nSELECT 2;") == ["SELECT 1", "SELECT 2"]
    assert split_statements("") == []
    assert split_statements("-- only a comment\n") == []


def test_sqlite_migrations_are_numbered_from_one() -> None:
    migrations = load_migrations("sqlite")
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    first = migrations[0]
    assert first.name == "initial"
    statements = split_statements(first.sql)
    tables = {s.split()[2] for s in statements if s.upper().startswith("CREATE TABLE")}
    assert {"runs", "journal", "signals", "blobs", "workers"} <= tables
