"""The C{wow} command: one entry point, sub-commands grouped by part."""
