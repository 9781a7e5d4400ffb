"""Relay mode: a charger's messages also go to other back offices (docs/relay.md).

- `policy.py`: the rules, pure — URLs, who decides a tag, how answers merge, what a
  blocked command is answered;
- `link.py`: one WebSocket connection to one back office for one station, with its
  durable queue (store.py) drained in order, one CALL at a time;
- `forwarding.py`: `Relay`, which forwards each charger CALL to the station's links
  and decides its answer, and relays the back offices' CALLs to the charger.

Nothing here imports the session: the session calls `Relay.forward` through the
`Forwarder` protocol (ocpp/session.py).
"""
