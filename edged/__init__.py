"""edged: an asynchronous edge-vision runtime daemon for the Kendryte K210 KPU."""

__version__ = "0.1.0"
