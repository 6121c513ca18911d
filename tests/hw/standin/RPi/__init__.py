"""Stand-in for the RPi package (see GPIO.py)."""
