"""The `raygram` command line (`raygram.cli.main:main`)."""
