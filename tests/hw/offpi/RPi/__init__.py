"""Like the real RPi package off a Pi: importing RPi.GPIO raises RuntimeError."""
