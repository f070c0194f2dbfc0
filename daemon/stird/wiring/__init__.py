"""Wiring, the top layer: configuration (TOML), the command line, the daemon's lifecycle
and reloads, the supervisor of background tasks, and systemd notification. It builds the
services and adapters from a configuration and starts them; nothing below imports it."""
