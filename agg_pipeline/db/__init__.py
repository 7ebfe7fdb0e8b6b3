"""PostgreSQL access: connection URLs, the embedded server, migrations and SQL files."""
