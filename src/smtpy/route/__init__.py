"""Where mail goes: alias rules and the SRS rewrite of the envelope sender (pure)."""
