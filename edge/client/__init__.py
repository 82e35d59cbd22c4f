"""The subscriber side of the wire: the subscriber library, `ssae edge tap`, and the control client."""
