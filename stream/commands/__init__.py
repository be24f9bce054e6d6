"""One module per CLI command, each with `main(cfg, args) -> exit code`."""
