"""The gateway's own web page (docs/web.md): live station table, a station's values,
configuration browser and editor, actions, message log, sessions, the gateway.

- `message_log.py` — the last OCPP frames per station and refused handshakes, in
  memory and bounded (what "what did the charger actually send?" needs).
- `live.py` — the extension on the event stream that pushes changed stations to
  open pages (Server-Sent Events), coalesced per tick.
- `views.py` — pure: state → table rows and station documents, sessions → monthly
  summaries and CSV.
- `app.py` — the aiohttp routes, the login and the cross-site request guard.
- `static/` — the page itself: one HTML file, one script, one stylesheet, no build step.
"""
