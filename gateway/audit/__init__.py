"""The audit log: one row per request, model report rows, and the writer that stores them.

`rows` builds rows from plain values (no aiohttp), `writer.AuditWriter` queues
and writes them without ever making a request wait, `spool` keeps them on disk
while the database is down, and `report` turns report rows into figures.
"""
