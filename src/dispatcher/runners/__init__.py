"""Live runner streams on this replica: sessions, slots, and the assigner that fills
free slots as soon as jobs or slots appear."""
