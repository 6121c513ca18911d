# The real RPi.GPIO 0.7.1 (and rpi-lgpio 0.6) do exactly this on a non-Pi machine.
raise RuntimeError("This module can only be run on a Raspberry Pi!")
