"""The results store: the DuckDB schema and the only code that opens DuckDB."""
