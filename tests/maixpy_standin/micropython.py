"""MicroPython's ``micropython`` module: only what the board script calls."""


def kbd_intr(char: int) -> None:
    """Which byte raises KeyboardInterrupt on the REPL's UART (-1: none); a pty has no REPL."""
