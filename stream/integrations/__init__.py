"""Where users already build: sentistream inside other frameworks.

`stream.integrations.pipecat`: a Pipecat `FrameProcessor` (`pip install 'sentistream[pipecat]'`).
Each integration imports its framework itself; importing this package imports none of them.
"""
