"""Static routes: a folder of files (a frontend build) served by the gateway itself.

`rules` decides from plain values what may be served and how (no aiohttp, no
file system); `serve` finds the file and answers with aiohttp's FileResponse.
"""
