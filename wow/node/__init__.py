"""The C{wow-node} daemon: composition of every per-host part."""
