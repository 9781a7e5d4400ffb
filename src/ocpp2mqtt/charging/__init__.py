"""Current control and load balancing (docs/load-balancing.md).

- `knowledge.py` (pure): what a charger announces about smart charging, the ways to
  set a limit in the order to try them, what worked, steps and the flash rules;
- `balancing.py` (pure): a group's capacity shared among the cars that charge, and
  the solar-surplus state machine;
- `control.py`: sets a station's limit the way that works, kind to its flash, and
  publishes what is in force;
- `extensions/load_balancing.py`: the groups' loop on the event stream.
"""
