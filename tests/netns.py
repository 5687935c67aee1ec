"""Integration tests use the package's laboratory (see L{wow.lab.netns})."""

from wow.lab.netns import HERE, Lab, skip_reason

__all__ = ["HERE", "Lab", "skip_reason"]
