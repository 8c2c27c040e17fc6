"""The HTTP server that `gateway serve` runs: listening, connections, workers.

run.py starts, serves and drains; protocol.py is aiohttp's request handler and
runner, subclassed for RFC 9457 parse errors and strict HTTP versions;
connections.py keeps every client connection and its limits (head time, idle
time, count); workers.py runs `--workers N` processes on one port.
"""
