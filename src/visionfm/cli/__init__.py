"""Command-line interface: ``visionfm <command> [flags]``."""
