"""The only place that runs SQL: engine and sessions, migrations, queries."""
