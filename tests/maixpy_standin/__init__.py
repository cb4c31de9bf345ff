"""Stand-ins for the MicroPython and MaixPy modules ``deploy/k210/edged_board.py`` imports.

The board script runs unchanged under CPython on one end of a pseudo-terminal: ``launch.py``
(run as a script, so this folder is first on ``sys.path``) installs MicroPython's extras on
``time`` and ``gc`` and runs it. The modules here keep MaixPy's names, signatures and error
texts (``KPU.load`` raises ``ValueError("[MAIXPY]kpu: load error:2006, ERR_NO_MEM: memory
not enough")``), and compute with edged's simulated KPU, so LOAD and RUN give real outputs
and the board's memory account is a real one under a configured budget. ``harness.py`` is
the tests' side: it opens the pty, starts, freezes, kills and restarts the board, presses
its BOOT key and burns kfpkg files into its flash.

Configuration comes from ``MAIXPY_STANDIN_*`` environment variables (see ``_board.py``).
"""
