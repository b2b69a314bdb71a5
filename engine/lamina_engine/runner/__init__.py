"""Model runner: device state and the forward step."""
