"""Device edge of avi-agent: audio (ALSA + fakes) and GPIO (RPi.GPIO + fakes).

`hw` never imports from `agent`. The agent uses only the Protocols
(`hw.audio.AudioSource`, `hw.audio.AudioSink`, `hw.gpio.Button`, `hw.gpio.Led`)
and the factories in `hw.config`.
"""
