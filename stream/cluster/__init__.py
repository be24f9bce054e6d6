"""Scale-out on Ray Serve (`serve --ray`, `run --ray`): Analyzer replicas that each own what one
process owns (engine, Whisper, streams), an ingress serving `serve`'s routes, placement on the
replica with the most free capacity. Importing this package imports no Ray: its modules do, and
the commands import them only in --ray mode."""
