"""PostgreSQL migrations: table ``aiswarm_schema_version`` records those applied."""
