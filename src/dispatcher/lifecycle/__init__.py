"""Use cases. Each owns its transaction and is the only writer of the state it changes:
every job transition goes through here, together with its event row."""
