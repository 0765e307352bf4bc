"""The folder adapter: a watchdog daemon that embeds images as they land in a folder."""
