"""`mpdistill serve`: the live dashboard, the HTTP job API and `/metrics`, in one ASGI process.

Jobs run as child processes with the normal CLI and are known by their files (job folder, status,
summary), so the server holds nothing that a crash could lose. May import config, state, report,
tools and api; never cli. Needs the optional extra `pip install 'mpdistill[serve]'`.
"""
